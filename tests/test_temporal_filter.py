"""TSConv's temporal stage (filter, batch norm, ELU): the C kernels and the PyTorch form against one float64 reference,
and what the dispatch leaves to PyTorch (FLOP counting must see the same FLOPs whichever form trains)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench import native
from bench.encoders import temporal_filter as TF


@pytest.fixture
def native_kernel():
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert TF.library() is not None, "a C compiler is here, yet the kernel was not built"


def _reference(x, kernel, bias, stride, norm, alpha, probe):
    """Filter, batch norm, ELU in float64, and the gradients of the filter's and the norm's parameters."""
    norm64 = copy.deepcopy(norm).double()
    k64, b64 = kernel.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    windows = x.double().unfold(-1, kernel.shape[1], stride).transpose(1, 2).reshape(-1, kernel.shape[1])
    h = torch.addmm(b64, windows, k64.t())
    out = F.elu(norm64(h.view(*h.shape, 1, 1)).view(h.shape), alpha)
    grads = torch.autograd.grad((out * probe.double()).sum(), (k64, b64, norm64.weight, norm64.bias))
    return out, grads, norm64


def _check(x, width, stride, threads=2, mode="train"):
    torch.manual_seed(1)
    kernel = (torch.randn(40, width) * 0.1).requires_grad_()
    bias = torch.randn(40).requires_grad_()
    norm, elu = nn.BatchNorm2d(40).train(mode == "train"), nn.ELU()
    with torch.no_grad():
        norm.weight.normal_(1, 0.3), norm.bias.normal_(0, 0.3), norm.running_var.uniform_(0.5, 2)
    before = copy.deepcopy(norm)
    torch.set_num_threads(threads)
    try:
        out = TF.temporal_stage(x, kernel, bias, stride, norm, elu)
        probe = torch.randn_like(out)
        grads = torch.autograd.grad((out * probe).sum(), (kernel, bias, norm.weight, norm.bias))
    finally:
        torch.set_num_threads(2)
    ref, ref_grads, ref_norm = _reference(x, kernel, bias, stride, before, 1.0, probe)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        if i == 1 and mode == "train":  # the filter's bias: analytically 0 before a batch norm on batch statistics
            assert g.abs().max() < 1e-4 * ref_grads[0].abs().max() and r.abs().max() < 1e-9
        else:
            torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())
    for a, b in zip(norm.buffers(), ref_norm.buffers()):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-6)
    return out


@pytest.mark.parametrize("shape,width,stride,threads,mode", [
    ((7, 63, 250), 75, 5, 3, "train"),  # TSConv's shape, 3 threads over 7 samples (3 + 3 + 1: a short last chunk)
    ((7, 63, 250), 75, 5, 2, "eval"),   # the running statistics, and their gradient (no batch-statistics terms)
    ((2, 5, 250), 75, 5, 1, "train"),   # an odd channel count: the one-row tail of the two-row loop
    ((3, 4, 60), 25, 1, 2, "train"),    # another width and stride (odd width: the one-k tail of the gradient's loop)
])
def test_native_temporal_stage_is_the_float64_modules(native_kernel, shape, width, stride, threads, mode):
    x = torch.randn(*shape) * 2 + 0.5
    out = _check(x, width, stride, threads, mode)
    assert type(out.grad_fn).__name__ == "_NativeTemporalStageBackward"


def test_the_pytorch_form_is_the_float64_modules(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    out = _check(torch.randn(3, 63, 250), 75, 5)
    assert type(out.grad_fn).__name__ != "_NativeTemporalStageBackward"


def test_a_strided_eeg_batch_is_read_where_it_lies(native_kernel):
    """A batch cut out of a longer recording (not contiguous) gives the filter of what it shows."""
    long = torch.randn(4, 63, 300)
    _check(long[:, :, 20:270], 75, 5)


def test_flop_counting_sees_the_same_flops_as_the_native_kernel_does(native_kernel, monkeypatch):
    """``bench perf`` counts a step's FLOPs under ``FlopCounterMode``; the kernels run outside PyTorch's dispatcher, so
    under a dispatch mode the trunk must run its PyTorch form: the count is the same whether the native forms train."""
    from bench.encoders.trunk import TSConvTrunk

    trunk, x = TSConvTrunk(63, 250), torch.randn(4, 63, 250)

    def counted() -> int:
        with FlopCounterMode(display=False) as counter:
            trunk(x).sum().backward()
        return counter.get_total_flops()

    with_native = counted()
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    rows = 4 * 36 * 63
    assert with_native == counted() and with_native >= 2 * (2 * rows * 75 * 40)  # at least the filter fwd + bwd


def test_an_empty_batch_passes_in_eval_mode(native_kernel):
    """No rows: nothing to take the statistics' shift from; the modules' form answers (an empty output)."""
    from bench.encoders.trunk import TSConvTrunk

    with torch.no_grad():
        assert TSConvTrunk(5, 250).eval()(torch.randn(0, 5, 250)).shape == (0, 1440)
