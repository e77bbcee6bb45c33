"""The physical limit a training step is measured against: the machine's own GEMM peak, timed in this process, and
a step's work counted from the model (forward + backward) with ``torch.utils.flop_counter``.

Both figures come from the process that trains, with its thread count, so a peak fraction compares like with like:
the same cores, the same BLAS / oneDNN build, the same load from other tenants within a minute.
"""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.method import Batch, Method, TrainState

#: square GEMM size: large enough that the BLAS runs at its best rate, small enough to time in a second on 2 cores
GEMM_N = 2048


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 has native arithmetic here: a GPU that says so, or a CPU whose oneDNN has bf16 kernels
    (AVX512-BF16 / AMX; elsewhere torch emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA launch returns before the kernel ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = GEMM_N,
              min_s: float = 1.0, repeats: int = 3) -> float:
    """FLOP/s of an ``n × n`` GEMM: the best of ``repeats`` timings of as many products as fill ``min_s`` seconds
    (the best, because other tenants only ever slow a timing down)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # first call: kernel selection, allocation
    sync_device(device)
    t0 = time.perf_counter()
    a @ b
    sync_device(device)
    count = max(1, int(min_s / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(count):
            a @ b
        sync_device(device)
        best = min(best, (time.perf_counter() - t0) / count)
    return 2.0 * n**3 / best


def machine_peaks(device: torch.device, min_s: float = 1.0) -> dict:
    """``{"float32": FLOP/s, "bfloat16": FLOP/s or None}`` on ``device``."""
    return {"float32": gemm_peak(device, torch.float32, min_s=min_s),
            "bfloat16": gemm_peak(device, torch.bfloat16, min_s=min_s) if bf16_supported(device) else None}


def step_flops(method: Method, batch: Batch, state: TrainState) -> int:
    """FLOPs of one training step's forward and backward on ``batch`` (the optimiser's elementwise update is not
    counted: it is memory traffic, not arithmetic). Gradients are cleared afterwards; batch-norm statistics moved
    by the counted forward are put back, so counting leaves the model as it was."""
    buffers = [b.detach().clone() for b in method.buffers()]
    method.train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = method(batch, state)
        loss.backward()
    method.zero_grad(set_to_none=True)
    with torch.no_grad():
        for b, saved in zip(method.buffers(), buffers):
            b.copy_(saved)
    return int(counter.get_total_flops())
