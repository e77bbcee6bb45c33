"""TSConv's temporal stage: 40 filters of width K slid at a stride over every channel, ``(B, C, T)`` → rows
``(sample, time step, channel)`` × 40 (the pooled kernel of :meth:`TSConvTrunk.pooled_kernel`, K = 75, stride 5), then
the batch norm and the ELU over those rows.

Three forms of one function, the fastest that applies:

* **Native** (:class:`_NativeTemporalStage`; CPU, float32, raw EEG): C kernels (:mod:`bench.native`). The filter reads
  each window where it lies in the EEG and keeps 2 rows × 40 filters in vector registers, so nothing the size of the
  windows is written: they overlap 15-fold (K / stride), and copying them out for a GEMM wrote 15× the EEG per pass.
  On one AVX2 core, 100 samples: forward 62 → 40 ms, kernel gradient 64 → 43 ms (34 and 32 GFLOP/s; the core's GEMM
  rate on a 1024² product is 35). The batch norm's sums are taken while each time step's rows are in cache, and the
  backward pass computes the batch norm + ELU input gradient a time step at a time for the kernel's gradient.
* **Blocked GEMM** (:class:`_BlockedTemporalGEMM`, CPU without the kernels): the windows copied out block by block
  and multiplied while in cache, then :func:`batch_norm_elu`.
* **One GEMM through autograd**: an input that needs its gradient (ATM-S's tokens), a GPU, autocast, ``torch.compile``
  or a dispatch mode (FLOP counting, fake tensors: they must see every op, and count the FLOPs the kernels do).

Tests hold the forms to one float64 reference (tests/test_temporal_filter.py).
"""
from __future__ import annotations

import ctypes
from typing import Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from bench import native
from bench.encoders import batchnorm_elu as BE
from bench.encoders.batchnorm_elu import batch_norm_elu

#: filters of the C kernel (TSConv's 40: five 8-wide vectors a row)
N_FILTERS = 40

_C_SOURCE = BE.C_SOURCE + r"""

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));   /* unaligned loads and stores */
#define NF 40
#define LD(p) (*(const v8u *)(p))
#define ST(p, v) (*(v8u *)(p) = (v))

/* out[(s, t, c), f] = bias[f] + sum_k x[s, c, t S + k] kt[k, f] for n samples of C x T; kt is K x 40. Two rows at a
   time share each load of kt: 10 accumulators, 5 kernel vectors, 2 broadcasts fit the 16 vector registers. Each time
   step's C rows, still in cache, go into the batch norm's sums of (out - shift) and (out - shift)^2 (s1, s2). */
void tf_forward(const float *x, int64_t n, int64_t C, int64_t T, int64_t Tout, int64_t K, int64_t S,
                const float *kt, const float *bias, const float *shift, float *out, double *s1, double *s2) {
    v8 b0 = LD(bias), b1 = LD(bias + 8), b2 = LD(bias + 16), b3 = LD(bias + 24), b4 = LD(bias + 32);
    for (int64_t s = 0; s < n; s++) {
        const float *xs = x + s * C * T;
        float *os = out + s * Tout * C * NF;
        for (int64_t t = 0; t < Tout; t++) {
            int64_t c = 0;
            for (; c + 1 < C; c += 2) {
                const float *p = xs + c * T + t * S, *q = p + T, *kp = kt;
                v8 a0 = b0, a1 = b1, a2 = b2, a3 = b3, a4 = b4, c0 = b0, c1 = b1, c2 = b2, c3 = b3, c4 = b4;
                for (int64_t k = 0; k < K; k++, kp += NF) {
                    float u = p[k], w = q[k];
                    v8 k0 = LD(kp), k1 = LD(kp + 8), k2 = LD(kp + 16), k3 = LD(kp + 24), k4 = LD(kp + 32);
                    a0 += u * k0; a1 += u * k1; a2 += u * k2; a3 += u * k3; a4 += u * k4;
                    c0 += w * k0; c1 += w * k1; c2 += w * k2; c3 += w * k3; c4 += w * k4;
                }
                float *o = os + (t * C + c) * NF;
                ST(o, a0); ST(o + 8, a1); ST(o + 16, a2); ST(o + 24, a3); ST(o + 32, a4);
                ST(o + 40, c0); ST(o + 48, c1); ST(o + 56, c2); ST(o + 64, c3); ST(o + 72, c4);
            }
            for (; c < C; c++) {
                const float *p = xs + c * T + t * S, *kp = kt;
                v8 a0 = b0, a1 = b1, a2 = b2, a3 = b3, a4 = b4;
                for (int64_t k = 0; k < K; k++, kp += NF) {
                    float u = p[k];
                    a0 += u * LD(kp); a1 += u * LD(kp + 8); a2 += u * LD(kp + 16); a3 += u * LD(kp + 24);
                    a4 += u * LD(kp + 32);
                }
                float *o = os + (t * C + c) * NF;
                ST(o, a0); ST(o + 8, a1); ST(o + 16, a2); ST(o + 24, a3); ST(o + 32, a4);
            }
            stats_c(os + t * C * NF, C, NF, shift, s1, s2);
        }
    }
}

/* acc[k, f] += sum over one time step's C rows of x[s, c, t S + k] g[(s, t, c), f], two k at a time. */
static void weight_grad_step(const float *xst, int64_t C, int64_t T, int64_t K, const float *g, float *acc) {
    int64_t k = 0;
    for (; k + 1 < K; k += 2) {
        float *ap = acc + k * NF;
        v8 a0 = LD(ap), a1 = LD(ap + 8), a2 = LD(ap + 16), a3 = LD(ap + 24), a4 = LD(ap + 32);
        v8 c0 = LD(ap + 40), c1 = LD(ap + 48), c2 = LD(ap + 56), c3 = LD(ap + 64), c4 = LD(ap + 72);
        const float *xp = xst + k, *gp = g;
        for (int64_t c = 0; c < C; c++, xp += T, gp += NF) {
            float u = xp[0], w = xp[1];
            v8 g0 = LD(gp), g1 = LD(gp + 8), g2 = LD(gp + 16), g3 = LD(gp + 24), g4 = LD(gp + 32);
            a0 += u * g0; a1 += u * g1; a2 += u * g2; a3 += u * g3; a4 += u * g4;
            c0 += w * g0; c1 += w * g1; c2 += w * g2; c3 += w * g3; c4 += w * g4;
        }
        ST(ap, a0); ST(ap + 8, a1); ST(ap + 16, a2); ST(ap + 24, a3); ST(ap + 32, a4);
        ST(ap + 40, c0); ST(ap + 48, c1); ST(ap + 56, c2); ST(ap + 64, c3); ST(ap + 72, c4);
    }
    for (; k < K; k++) {
        float *ap = acc + k * NF;
        v8 a0 = LD(ap), a1 = LD(ap + 8), a2 = LD(ap + 16), a3 = LD(ap + 24), a4 = LD(ap + 32);
        const float *xp = xst + k, *gp = g;
        for (int64_t c = 0; c < C; c++, xp += T, gp += NF) {
            float u = xp[0];
            a0 += u * LD(gp); a1 += u * LD(gp + 8); a2 += u * LD(gp + 16); a3 += u * LD(gp + 24); a4 += u * LD(gp + 32);
        }
        ST(ap, a0); ST(ap + 8, a1); ST(ap + 16, a2); ST(ap + 24, a3); ST(ap + 32, a4);
    }
}

/* The batch norm + ELU's input gradient (dy = du k1 + (y - mean) k2 + k3, as bn_elu_backward_input) one time step's
   C rows at a time, each used while in cache for the filter's kernel and bias gradients, added into float64 totals
   gkt (K x 40) and gbias (40): nothing the size of dy is written. A sample's sums are float32, the totals float64. */
void tf_weight_grad_bn_elu(const float *x, int64_t n, int64_t C, int64_t T, int64_t Tout, int64_t K, int64_t S,
                           const float *dz, const float *z, const float *y, const float *mean, const float *k1,
                           const float *k2, const float *k3, float alpha, double *gkt, double *gbias) {
    float acc[K * NF], bias[NF], dy[C * NF];
    for (int64_t s = 0; s < n; s++) {
        for (int64_t i = 0; i < K * NF; i++) acc[i] = 0.0f;
        for (int64_t f = 0; f < NF; f++) bias[f] = 0.0f;
        for (int64_t t = 0; t < Tout; t++) {
            int64_t row = (s * Tout + t) * C * NF;
            input_c(dz + row, z + row, y + row, C, NF, mean, k1, k2, k3, alpha, dy);
            weight_grad_step(x + s * C * T + t * S, C, T, K, dy, acc);
            for (int64_t r = 0; r < C; r++)
                for (int64_t f = 0; f < NF; f++) bias[f] += dy[r * NF + f];
        }
        for (int64_t i = 0; i < K * NF; i++) gkt[i] += acc[i];
        for (int64_t f = 0; f < NF; f++) gbias[f] += bias[f];
    }
}
"""

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {**BE.SIGNATURES, "tf_forward": [_P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P],
               "tf_weight_grad_bn_elu": [_P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _F, _P, _P]}
#: samples per thread at the least (one sample of 63 × 250 is ~14 MFLOP each way)
MIN_SAMPLES_PER_THREAD = 2


def library() -> ctypes.CDLL | None:
    return native.load("tsconv_temporal", _C_SOURCE, _SIGNATURES)


def temporal_stage(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, stride: int, norm: nn.BatchNorm2d,
                   elu: nn.ELU) -> torch.Tensor:
    """``elu(norm(filter))``: ``kernel`` (filters × K) with ``bias`` over the stride-``stride`` windows of every channel
    of ``x`` (B, C, T), then the batch norm and the ELU (the modules' state used and updated as they do it):
    ``(B·T'·C, filters)``, rows ordered (sample, time step, channel)."""
    n_out = (x.shape[2] - kernel.shape[1]) // stride + 1
    if _native_applies(x, kernel, norm, elu, x.shape[0] * n_out * x.shape[1]) and (lib := library()) is not None:
        return _NativeTemporalStage.apply(x.contiguous(), kernel, bias, norm.weight, norm.bias, norm, float(elu.alpha),
                                          stride, lib)
    return batch_norm_elu(norm, elu, _filter(x, kernel, bias, stride))


def _native_applies(x: torch.Tensor, kernel: torch.Tensor, norm: nn.BatchNorm2d, elu: nn.ELU, rows: int) -> bool:
    return (x.device.type == "cpu" and not x.requires_grad and x.dtype == kernel.dtype == torch.float32
            and kernel.shape[0] == N_FILTERS == norm.num_features and not torch.is_autocast_enabled("cpu")
            and BE.native_applies(norm, elu, rows))


def _filter(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """The filter alone in PyTorch: block by block on the CPU for raw EEG, else one GEMM through autograd."""
    if x.device.type != "cpu" or x.requires_grad or torch.is_autocast_enabled("cpu") \
            or torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return torch.addmm(bias, _windows(x, kernel.shape[1], stride).reshape(-1, kernel.shape[1]), kernel.t())
    return _BlockedTemporalGEMM.apply(x, kernel, bias, stride)


def _shape(x: torch.Tensor, kernel: torch.Tensor, stride: int) -> tuple[int, int, int, int, int]:
    batch, chans, times = x.shape
    return batch, chans, times, (times - kernel.shape[1]) // stride + 1, kernel.shape[1]


class _NativeTemporalStage(torch.autograd.Function):
    """The filter, batch norm and ELU, the samples split over torch's thread count. Saved for backward: the EEG, the
    filter's output ``y`` and the ELU's output ``z``. The EEG gets no gradient (it is data)."""

    @staticmethod
    def forward(ctx, x, kernel, bias, weight, beta, norm, alpha, stride, lib):
        batch, chans, times, n_out, width = _shape(x, kernel, stride)
        rows, threads = batch * n_out * chans, BE.native_threads()
        kernel_t, bias_c = kernel.detach().t().contiguous(), bias.detach().contiguous()
        shift = torch.addmv(bias_c, kernel_t.t(), x[0, 0, :width])  # the first row of y: what the sums are about
        sums = torch.zeros(threads, 2, N_FILTERS, dtype=torch.float64)
        y = x.new_empty(rows, N_FILTERS)
        n = native.run_in_row_chunks(batch, threads, lambda k, i, j: lib.tf_forward(
            BE.row_pointer(x, i), j - i, chans, times, n_out, width, stride, kernel_t.data_ptr(),
            bias_c.data_ptr(), shift.data_ptr(), BE.row_pointer(y, i * n_out * chans),
            sums[k, 0].data_ptr(), sums[k, 1].data_ptr()), min_rows=MIN_SAMPLES_PER_THREAD)
        mean, invstd, batch_stats = BE.statistics(norm, rows, lambda: BE.mean_var(sums[:n].sum(0), shift, rows))
        gamma = BE.gamma_of(weight, invstd)
        z = BE.normalise_elu(lib, y, gamma, beta, mean, invstd, alpha)
        ctx.save_for_backward(x, kernel, y, z, gamma, mean, invstd)
        ctx.alpha, ctx.batch_stats, ctx.stride, ctx.lib = alpha, batch_stats, stride, lib
        return z

    @staticmethod
    def backward(ctx, dz):
        x, kernel, y, z, gamma, mean, invstd = ctx.saved_tensors
        lib, dz, mean32 = ctx.lib, dz.contiguous(), mean.float()
        batch, chans, times, n_out, width = _shape(x, kernel, ctx.stride)
        s_du, s_duy = BE.backward_sums(lib, dz, z, y, mean32, ctx.alpha)
        k1, k2, k3 = BE.input_coefficients(gamma, invstd, s_du, s_duy, y.shape[0], ctx.batch_stats)
        sums = torch.zeros(BE.native_threads(), width * N_FILTERS + N_FILTERS, dtype=torch.float64)
        per_sample = n_out * chans  # rows of y, z and dz
        n = native.run_in_row_chunks(batch, sums.shape[0], lambda k, i, j: lib.tf_weight_grad_bn_elu(
            BE.row_pointer(x, i), j - i, chans, times, n_out, width, ctx.stride,
            BE.row_pointer(dz, i * per_sample), BE.row_pointer(z, i * per_sample), BE.row_pointer(y, i * per_sample),
            mean32.data_ptr(), k1.data_ptr(), k2.data_ptr(), k3.data_ptr(), ctx.alpha, sums[k].data_ptr(),
            sums[k, width * N_FILTERS:].data_ptr()), min_rows=MIN_SAMPLES_PER_THREAD)
        total = sums[:n].sum(0).to(kernel.dtype)
        grad_kernel = total[:width * N_FILTERS].view(width, N_FILTERS).t()
        grad_weight = (s_duy * invstd).float() if ctx.needs_input_grad[3] else None
        grad_beta = s_du.float() if ctx.needs_input_grad[4] else None
        return None, grad_kernel, total[width * N_FILTERS:], grad_weight, grad_beta, None, None, None, None


#: rows of the temporal GEMM per block in :class:`_BlockedTemporalGEMM`: a block's windows (32768 × 75 float32, 9.4 MiB)
#: are copied out and multiplied while still in cache. Measured on the 2-core AVX2 VM, NICE's trunk forward + backward:
#: batch 1000 on 2 threads 3.46 s unblocked, 2.99 s at 8192 rows, 2.71 s at 32768, 2.77 s at 65536; batch 64 on one
#: thread 252 ms unblocked, 240 ms at 32768.
WINDOW_BLOCK_ROWS = 32768


class _BlockedTemporalGEMM(torch.autograd.Function):
    """``addmm(bias, windows, kernelᵀ)`` over blocks of whole samples, the windows copied out one block at a time.

    The single GEMM materialised every window (B·T'·C × 75: 680 MB for a batch of 1000 at 63 × 250, 15 × the EEG),
    wrote it to memory, read it back, and kept it for the backward pass. Here a block's copy is used while in cache and
    dropped; the backward pass copies each block again for the kernel's gradient (``Σ windowsᵀ · grad``). The EEG
    itself gets no gradient (it is data), so only the kernel and the bias do."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
        windows = _windows(x, kernel.shape[1], stride)
        out = x.new_empty(windows.shape[:3].numel(), kernel.shape[0])
        for block, rows in _window_blocks(windows):
            torch.addmm(bias, block, kernel.t(), out=out[rows])
        ctx.save_for_backward(x, kernel)
        ctx.stride = stride
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, kernel = ctx.saved_tensors
        grad_kernel_t = kernel.new_zeros(kernel.shape[1], kernel.shape[0])
        for block, rows in _window_blocks(_windows(x, kernel.shape[1], ctx.stride)):
            # the out= form, as FLOP counters know it (they miss addmm_)
            torch.addmm(grad_kernel_t, block.t(), grad[rows], out=grad_kernel_t)
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return None, grad_kernel_t.t(), grad_bias, None


def _windows(x: torch.Tensor, width: int, stride: int) -> torch.Tensor:
    """The ``(B, T', C, width)`` windows of ``(B, C, T)`` ``x``: a view, nothing copied."""
    return x.unfold(-1, width, stride).transpose(1, 2)


def _window_blocks(windows: torch.Tensor) -> Iterator[tuple[torch.Tensor, slice]]:
    """Blocks of whole samples of ~``WINDOW_BLOCK_ROWS`` rows: each block's windows as a ``(rows, width)`` matrix (the
    one copy) and the slice of output rows it fills."""
    per_sample = windows.shape[1] * windows.shape[2]
    per_block = max(1, WINDOW_BLOCK_ROWS // per_sample)
    for i in range(0, windows.shape[0], per_block):
        j = min(windows.shape[0], i + per_block)
        yield windows[i:j].reshape(-1, windows.shape[3]), slice(i * per_sample, j * per_sample)
