"""Batch norm followed by ELU on rows × channels, the channels last in memory: the pair TSConv applies twice (its
spatial layer here; its temporal stage, :mod:`bench.encoders.temporal_filter`, compiles this C source with its filter).

On the CPU the pair runs as one C kernel (:mod:`bench.native`) when a compiler is at hand: statistics in one pass,
normalisation and ELU in a second, and a backward pass of two (sums, then the input gradient), where PyTorch's
modules took ~10 kernels. NICE's temporal-filter output at batch 1000 is 2.3 M rows × 40 (363 MB): forward + backward
0.60 → 0.27 s on two AVX2 cores. Elsewhere (GPU, other dtypes, ``torch.compile``, ``BENCH_NATIVE=0``, no compiler)
the modules run as before (:func:`_norm_then_elu`).

The two forms compute the same function: tests hold both to the same float64 reference (outputs, the input's and the
affine parameters' gradients, the running statistics). The kernel's statistics are float32 partial sums over 64 rows
added in float64, closer to that reference than PyTorch's own float32 batch norm (at 2.3 M rows: 7e-7 against 3e-3
on the output).
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from bench import native

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* expm1(x) for x <= 0: Cephes expf's range reduction and polynomial, kept as e^x - 1 so that values near 0 keep their
   relative precision (the ELU near 0); branch-free so that the loops calling it vectorise. */
static inline float expm1_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float q = p * r * r + r;                       /* e^r - 1 */
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);           /* 2^n */
    return scale * q + (scale - 1.0f);
}

/* ELU of u; a NaN stays NaN (u <= 0 is false for it), so a diverged run does not turn into zeros here. */
static inline float elu(float u, float alpha) {
    float neg = alpha * expm1_neg(u < 0.0f ? u : 0.0f);
    return u <= 0.0f ? neg : u;
}

/* The ELU's derivative times g, from the ELU's output z: g where z > 0, g (z + alpha) elsewhere (alpha > 0). */
static inline float elu_grad(float g, float z, float alpha) { return z > 0.0f ? g : g * (z + alpha); }

/* Partial sums run over ROWS rows in float32 (vector-wide inner loops), then go into float64 totals. */
#define ROWS 64

static inline void stats_c(const float *restrict y, int64_t rows, int64_t C, const float *restrict shift,
                           double *restrict s1, double *restrict s2) {
    float a1[C], a2[C];
    for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
        int64_t r1 = r0 + ROWS < rows ? r0 + ROWS : rows;
        for (int64_t c = 0; c < C; c++) { a1[c] = 0.0f; a2[c] = 0.0f; }
        for (int64_t r = r0; r < r1; r++) {
            const float *restrict yr = y + r * C;
            for (int64_t c = 0; c < C; c++) { float d = yr[c] - shift[c]; a1[c] += d; a2[c] += d * d; }
        }
        for (int64_t c = 0; c < C; c++) { s1[c] += a1[c]; s2[c] += a2[c]; }
    }
}

static inline void forward_c(const float *restrict y, int64_t rows, int64_t C, const float *restrict a,
                             const float *restrict b, float alpha, float *restrict z) {
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict yr = y + r * C;
        float *restrict zr = z + r * C;
        for (int64_t c = 0; c < C; c++) zr[c] = elu(yr[c] * a[c] + b[c], alpha);
    }
}

static inline void sums_c(const float *restrict g, const float *restrict z, const float *restrict y, int64_t rows,
                          int64_t C, const float *restrict mean, float alpha, double *restrict s_du,
                          double *restrict s_duy) {
    float a1[C], a2[C];
    for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
        int64_t r1 = r0 + ROWS < rows ? r0 + ROWS : rows;
        for (int64_t c = 0; c < C; c++) { a1[c] = 0.0f; a2[c] = 0.0f; }
        for (int64_t r = r0; r < r1; r++) {
            const float *restrict gr = g + r * C, *restrict zr = z + r * C, *restrict yr = y + r * C;
            for (int64_t c = 0; c < C; c++) {
                float du = elu_grad(gr[c], zr[c], alpha);
                a1[c] += du; a2[c] += du * (yr[c] - mean[c]);
            }
        }
        for (int64_t c = 0; c < C; c++) { s_du[c] += a1[c]; s_duy[c] += a2[c]; }
    }
}

static inline void input_c(const float *restrict g, const float *restrict z, const float *restrict y, int64_t rows,
                           int64_t C, const float *restrict mean, const float *restrict k1, const float *restrict k2,
                           const float *restrict k3, float alpha, float *restrict dy) {
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict gr = g + r * C, *restrict zr = z + r * C, *restrict yr = y + r * C;
        float *restrict out = dy + r * C;
        for (int64_t c = 0; c < C; c++)
            out[c] = elu_grad(gr[c], zr[c], alpha) * k1[c] + (yr[c] - mean[c]) * k2[c] + k3[c];
    }
}

/* Each entry point inlines its loop once for TSConv's 40 channels (unrolled, vector-wide) and once for any C. */

/* Sums over rows of (y - shift) and (y - shift)^2, added into s1, s2. */
void bn_stats(const float *y, int64_t rows, int64_t C, const float *shift, double *s1, double *s2) {
    if (C == 40) stats_c(y, rows, 40, shift, s1, s2); else stats_c(y, rows, C, shift, s1, s2);
}

/* z = ELU(y a + b): the batch norm with its statistics and affine parameters folded into a and b, then the ELU. */
void bn_elu_forward(const float *y, int64_t rows, int64_t C, const float *a, const float *b, float alpha, float *z) {
    if (C == 40) forward_c(y, rows, 40, a, b, alpha, z); else forward_c(y, rows, C, a, b, alpha, z);
}

/* Sums over rows of du = ELU'(.) g and of du (y - mean), added into s_du, s_duy. */
void bn_elu_backward_sums(const float *g, const float *z, const float *y, int64_t rows, int64_t C, const float *mean,
                          float alpha, double *s_du, double *s_duy) {
    if (C == 40) sums_c(g, z, y, rows, 40, mean, alpha, s_du, s_duy);
    else sums_c(g, z, y, rows, C, mean, alpha, s_du, s_duy);
}

/* dy = du k1 + (y - mean) k2 + k3: batch norm's input gradient, the sums over the batch folded into k1, k2, k3. */
void bn_elu_backward_input(const float *g, const float *z, const float *y, int64_t rows, int64_t C, const float *mean,
                           const float *k1, const float *k2, const float *k3, float alpha, float *dy) {
    if (C == 40) input_c(g, z, y, rows, 40, mean, k1, k2, k3, alpha, dy);
    else input_c(g, z, y, rows, C, mean, k1, k2, k3, alpha, dy);
}
"""

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
SIGNATURES = {
    "bn_stats": [_P, _I, _I, _P, _P, _P],
    "bn_elu_forward": [_P, _I, _I, _P, _P, _F, _P],
    "bn_elu_backward_sums": [_P, _P, _P, _I, _I, _P, _F, _P, _P],
    "bn_elu_backward_input": [_P, _P, _P, _I, _I, _P, _P, _P, _P, _F, _P],
}


def library() -> ctypes.CDLL | None:
    return native.load("bn_elu", C_SOURCE, SIGNATURES)


def batch_norm_elu(norm: nn.BatchNorm2d, elu: nn.ELU, h: torch.Tensor) -> torch.Tensor:
    """``elu(norm(h))`` for ``h`` of rows × channels, the modules' state (running statistics, momentum, batch counter,
    training flag) used and updated as the modules do."""
    rows_on_cpu = h.device.type == "cpu" and h.dtype == torch.float32 and h.dim() == 2 and h.is_contiguous()
    lib = library() if rows_on_cpu and h.shape[1] == norm.num_features and native_applies(norm, elu, len(h)) else None
    if lib is None:
        return _norm_then_elu(norm, elu, h)
    mean, invstd, batch_stats = statistics(norm, h.shape[0], lambda: _batch_statistics(lib, h))
    return _BatchNormELU.apply(h, norm.weight, norm.bias, mean, invstd, float(elu.alpha), batch_stats)


def native_applies(norm: nn.BatchNorm2d, elu: nn.ELU, rows: int) -> bool:
    """Eager mode without a dispatch mode (FLOP counters and fake tensors must see the modules' ops), ELU with α > 0
    (its derivative is then read from its output), float32 parameters; one row under batch statistics (or none at
    all) is left to the module, which refuses it as PyTorch does. The caller checks its tensor (float32, on the CPU)."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None and float(elu.alpha) > 0.0
            and rows > (1 if norm.training or norm.running_mean is None else 0)
            and (norm.weight is None or norm.weight.dtype == torch.float32))


def statistics(norm: nn.BatchNorm2d, rows: int, batch_mean_var) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The mean and 1/std the module normalises with (float64) and whether they are the batch's own; the batch's are
    ``batch_mean_var()`` (mean, biased variance), and in training they update the module's running statistics."""
    batch_stats = norm.training or norm.running_mean is None
    if batch_stats:
        mean, var = batch_mean_var()
        if norm.training and norm.track_running_stats:
            _update_running_stats(norm, mean, var, rows)
    else:
        mean, var = norm.running_mean.double(), norm.running_var.double()
    return mean, (var + norm.eps).rsqrt(), batch_stats


def row_pointer(t: torch.Tensor, row: int) -> int:
    """The address of row ``row`` (index along the first axis) of ``t``, for a kernel that walks from there."""
    return t.data_ptr() + row * t.stride(0) * t.element_size()


def _batch_statistics(lib: ctypes.CDLL, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``h``'s rows: sums of ``h − h[0]`` over row chunks on torch's thread
    count (:func:`mean_var`)."""
    rows, chans = h.shape
    shift = h[0].clone()
    sums = torch.zeros(native_threads(), 2, chans, dtype=torch.float64)
    n = native.run_in_row_chunks(rows, sums.shape[0], lambda k, i, j: lib.bn_stats(
        row_pointer(h, i), j - i, chans, shift.data_ptr(), sums[k, 0].data_ptr(), sums[k, 1].data_ptr()))
    return mean_var(sums[:n].sum(0), shift, rows)


def mean_var(sums: torch.Tensor, shift: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance (float64) from ``sums`` = (Σ (h − shift), Σ (h − shift)²): shifted by a row of the
    data, so that a mean far from 0 does not cancel the variance away."""
    s1, s2 = sums / rows
    return shift.double() + s1, (s2 - s1 * s1).clamp_(min=0.0)


def native_threads() -> int:
    return max(1, torch.get_num_threads())


@torch.no_grad()
def _update_running_stats(norm: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, rows: int) -> None:
    """As ``nn.BatchNorm2d.forward`` and ``F.batch_norm`` do it: the batch counter, then an exponential (or, with
    ``momentum=None``, cumulative) average with the unbiased batch variance."""
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
    factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    if norm.running_mean is not None:
        norm.running_mean.mul_(1 - factor).add_(mean.to(norm.running_mean.dtype), alpha=factor)
        unbiased = var * (rows / (rows - 1))
        norm.running_var.mul_(1 - factor).add_(unbiased.to(norm.running_var.dtype), alpha=factor)


def gamma_of(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return weight.detach().double() if weight is not None else torch.ones_like(like)


def normalise_elu(lib: ctypes.CDLL, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None,
                  mean: torch.Tensor, invstd: torch.Tensor, alpha: float) -> torch.Tensor:
    """ELU(γ (h − mean) · invstd + β) of ``h``'s rows, on torch's thread count."""
    rows, chans = h.shape
    scale = gamma * invstd
    shift = (beta.detach().double() if beta is not None else torch.zeros_like(invstd)) - mean * scale
    scale32, shift32 = scale.float(), shift.float()
    out = torch.empty_like(h)
    native.run_in_row_chunks(rows, native_threads(), lambda k, i, j: lib.bn_elu_forward(
        row_pointer(h, i), j - i, chans, scale32.data_ptr(), shift32.data_ptr(), alpha, row_pointer(out, i)))
    return out


def backward_sums(lib: ctypes.CDLL, grad: torch.Tensor, out: torch.Tensor, h: torch.Tensor, mean32: torch.Tensor,
                  alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ du and Σ du (h − mean) over the rows (du: the gradient through the ELU): β's and, times invstd, γ's."""
    rows, chans = h.shape
    sums = torch.zeros(native_threads(), 2, chans, dtype=torch.float64)
    n = native.run_in_row_chunks(rows, sums.shape[0], lambda k, i, j: lib.bn_elu_backward_sums(
        row_pointer(grad, i), row_pointer(out, i), row_pointer(h, i), j - i, chans, mean32.data_ptr(), alpha,
        sums[k, 0].data_ptr(), sums[k, 1].data_ptr()))
    s_du, s_duy = sums[:n].sum(0)
    return s_du, s_duy


def input_coefficients(gamma, invstd, s_du, s_duy, rows: int, batch_stats: bool) -> tuple[torch.Tensor, ...]:
    """k1, k2, k3 (float32) of the input gradient ``du k1 + (h − mean) k2 + k3``; with the batch's own statistics k2
    and k3 carry their dependence on the input (batch norm's training-mode backward), else they are 0."""
    k1 = gamma * invstd
    k2 = -k1 * invstd * invstd * s_duy / rows if batch_stats else torch.zeros_like(k1)
    k3 = -k1 * s_du / rows if batch_stats else torch.zeros_like(k1)
    return k1.float(), k2.float(), k3.float()


class _BatchNormELU(torch.autograd.Function):
    """ELU(γ (h − mean) · invstd + β) with mean and invstd given. With ``batch_stats`` they are the batch's own, and the
    input gradient includes their dependence on ``h``; otherwise they are constants (the running statistics). Saved
    for backward: ``h`` and the output, nothing else of that size."""

    @staticmethod
    def forward(ctx, h, weight, bias, mean, invstd, alpha, batch_stats):
        gamma = gamma_of(weight, invstd)
        out = normalise_elu(library(), h, gamma, bias, mean, invstd, alpha)
        ctx.save_for_backward(h, out, gamma, mean, invstd)
        ctx.alpha, ctx.batch_stats = alpha, batch_stats
        return out

    @staticmethod
    def backward(ctx, grad):
        h, out, gamma, mean, invstd = ctx.saved_tensors
        lib, grad = library(), grad.contiguous()
        rows, chans = h.shape
        mean32 = mean.float()
        s_du, s_duy = backward_sums(lib, grad, out, h, mean32, ctx.alpha)
        grad_h = None
        if ctx.needs_input_grad[0]:
            k1, k2, k3 = input_coefficients(gamma, invstd, s_du, s_duy, rows, ctx.batch_stats)
            grad_h = torch.empty_like(h)
            native.run_in_row_chunks(rows, native_threads(), lambda k, i, j: lib.bn_elu_backward_input(
                row_pointer(grad, i), row_pointer(out, i), row_pointer(h, i), j - i, chans, mean32.data_ptr(),
                k1.data_ptr(), k2.data_ptr(), k3.data_ptr(), ctx.alpha, row_pointer(grad_h, i)))
        grad_weight = (s_duy * invstd).float() if ctx.needs_input_grad[1] else None
        grad_bias = s_du.float() if ctx.needs_input_grad[2] else None
        return grad_h, grad_weight, grad_bias, None, None, None, None


def _norm_then_elu(norm: nn.BatchNorm2d, elu: nn.ELU, h: torch.Tensor) -> torch.Tensor:
    """The modules themselves: batch norm on the ``(rows, channels, 1, 1)`` view (the same statistics over the same
    values as on ``(batch, channels, H, W)``), then the ELU (:func:`_elu`)."""
    return _elu(elu, norm(h.view(*h.shape, 1, 1)).view(h.shape))


class _ELUByExp(torch.autograd.Function):
    """ELU with ``exp(min(x, 0)) − 1`` for its negative part instead of ``expm1``: torch's CPU ``expm1`` is not
    vectorised (``F.elu`` took 33 ms on the 64-sample temporal output, this 21 ms, on one AVX2 core), and the two differ
    by at most 1.2e-7 (float32 rounding of ``exp − 1`` near 0). The backward is torch's own ``elu_backward`` from the
    output, as ``nn.ELU`` does it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        out = x.clamp(max=0).exp_().sub_(1)
        if alpha != 1.0:
            out.mul_(alpha)
        if 0.0 <= alpha <= 1.0:
            # α(eˣ − 1) ≥ x for x ≤ 0 and is 0 for x > 0, so the max is the ELU: one pass and no temporary where
            # adding max(x, 0) took two (the ELU of 256 samples' temporal output on one AVX2 core: 100-123 → 88-99 ms;
            # a whole step's difference is below that VM's noise)
            torch.maximum(out, x, out=out)
        else:
            out.add_(x.clamp(min=0))
        ctx.alpha = alpha
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, ctx.alpha, 1.0, 1.0, True, out), None


def _elu(module: nn.ELU, h: torch.Tensor) -> torch.Tensor:
    """``module`` (the ELU of NICE's structure, kept for its ``alpha``) applied by :class:`_ELUByExp`; on a GPU, or
    under ``torch.compile``'s tracing, ``F.elu`` itself (its kernels there have no slow ``expm1``)."""
    if h.device.type != "cpu" or torch.compiler.is_compiling():
        return module(h)
    return _ELUByExp.apply(h, float(module.alpha))
