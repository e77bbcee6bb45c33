"""TSConv's batch norm + ELU on rows × channels: the native kernel and the modules' form against one float64 reference.

The reference is ``nn.BatchNorm2d`` then ``F.elu`` in float64 on the same values. Both forms must match it in the
output, the input's, weight's and bias's gradients, the running statistics and the batch counter, in training and in
eval mode; the native one on enough rows to be split over threads.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import native
from bench.encoders import batchnorm_elu as BE


@pytest.fixture
def native_kernel():
    """The compiled kernel, which the machines this runs on must be able to build (they have a C compiler)."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert BE.library() is not None, "a C compiler is here, yet the kernel was not built"


def _modules(chans, alpha, momentum, seed=0):
    torch.manual_seed(seed)
    norm, elu = nn.BatchNorm2d(chans, momentum=momentum), nn.ELU(alpha)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5), norm.bias.normal_(0.0, 0.5)
        norm.running_mean.normal_(0.0, 1.0), norm.running_var.uniform_(0.5, 2.0)
    return norm, elu


def _float64_reference(norm, elu, h, probe):
    norm64 = copy.deepcopy(norm).double()
    h64 = h.double().requires_grad_()
    out = F.elu(norm64(h64.view(*h.shape, 1, 1)).view(h.shape), elu.alpha)
    grads = torch.autograd.grad((out * probe.double()).sum(), (h64, norm64.weight, norm64.bias))
    return out, grads, norm64


def _assert_matches(norm, elu, h, probe, forward):
    ref_out, ref_grads, ref_norm = _float64_reference(norm, elu, h, probe)
    h = h.clone().requires_grad_()
    out = forward(norm, elu, h)
    grads = torch.autograd.grad((out * probe).sum(), (h, norm.weight, norm.bias))
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())
    for a, b in zip(norm.buffers(), ref_norm.buffers()):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-6)
    return out


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("chans,alpha,momentum", [(40, 1.0, 0.1), (7, 0.3, None), (40, 2.5, 0.5)])
def test_native_batch_norm_elu_is_the_float64_modules(native_kernel, mode, chans, alpha, momentum):
    """50,000 rows (split over 3 threads) with a mean far from 0, twice (the running averages move, the counter
    counts): output, all three gradients and the buffers against float64."""
    norm, elu = _modules(chans, alpha, momentum)
    norm.train(mode == "train")
    torch.set_num_threads(3)
    try:
        for step in range(2):
            h = torch.randn(50_000, chans) * 3 + 20 + step
            out = _assert_matches(norm, elu, h, torch.randn_like(h), BE.batch_norm_elu)
            assert type(out.grad_fn).__name__ == "_BatchNormELUBackward"
    finally:
        torch.set_num_threads(2)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_modules_form_is_the_float64_modules(monkeypatch, mode):
    """The fallback (``BENCH_NATIVE=0``) under the same test, on fewer rows (torch's float32 batch norm drifts from
    float64 with the row count: 7e-5 on the output at 200,000 rows)."""
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    norm, elu = _modules(40, 1.0, 0.1)
    norm.train(mode == "train")
    h = torch.randn(3000, 40) * 3 + 2
    out = _assert_matches(norm, elu, h, torch.randn_like(h), BE.batch_norm_elu)
    assert type(out.grad_fn).__name__ != "_BatchNormELUBackward"


def test_native_elu_keeps_its_precision_near_zero_and_far_below(native_kernel):
    """With the batch norm an identity (eval, mean 0, var 1 − eps, γ 1, β 0) the kernel is the ELU: ``expm1``'s relative
    precision for tiny negatives (``exp − 1`` would round them to multiples of 6e-8), −α for very negative inputs."""
    norm, elu = nn.BatchNorm2d(1).eval(), nn.ELU(1.0)
    with torch.no_grad():
        norm.running_var.fill_(1 - norm.eps)
    x = torch.cat([torch.linspace(-100, 5, 100_001), -torch.logspace(-30, 0, 301), torch.tensor([0.0, -0.0])])
    with torch.no_grad():
        out = BE.batch_norm_elu(norm, elu, x.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(out.double(), F.elu(x.double()), rtol=4e-7, atol=1e-38)


def test_a_nan_spreads_as_in_torch(native_kernel):
    """A diverged activation must not come out as zeros: a NaN in one channel makes that channel NaN everywhere (its
    statistics are NaN), the others stay finite, and its gradients are NaN too."""
    norm, elu = _modules(40, 1.0, 0.1)
    h = torch.randn(20_000, 40)
    h[123, 5] = float("nan")
    h.requires_grad_()
    out = BE.batch_norm_elu(norm, elu, h)
    out.sum().backward()
    assert out[:, 5].isnan().all() and out[:, [4, 6]].isfinite().all()
    assert h.grad[:, 5].isnan().all() and norm.weight.grad[5].isnan() and norm.weight.grad[4].isfinite()


def test_thread_count_changes_nothing_beyond_rounding(native_kernel):
    norm, elu = _modules(40, 1.0, 0.1)
    h, probe = torch.randn(70_000, 40) + 3, torch.randn(70_000, 40)
    results = []
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        x = h.clone().requires_grad_()
        out = BE.batch_norm_elu(copy.deepcopy(norm), elu, x)
        results.append((out, torch.autograd.grad((out * probe).sum(), x)[0]))
    torch.set_num_threads(2)
    for out, grad in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-6, atol=1e-6)


def test_a_broadcast_gradient_is_read_right(native_kernel):
    """``out.sum()``'s gradient reaches the kernel as an expanded tensor (stride 0), not as rows × channels."""
    norm, elu = _modules(40, 1.0, 0.1)
    h = torch.randn(5000, 40)
    _assert_matches(norm, elu, h, torch.ones_like(h), lambda n, e, x: BE.batch_norm_elu(n, e, x))


@pytest.mark.parametrize("case", ["float64", "alpha 0", "one row", "transposed"])
def test_what_the_kernel_does_not_take_goes_to_the_modules(native_kernel, case):
    norm, elu = _modules(40, 0.0 if case == "alpha 0" else 1.0, 0.1)
    h = {"float64": torch.randn(64, 40, dtype=torch.float64), "one row": torch.randn(1, 40),
         "transposed": torch.randn(40, 64).t()}.get(case, torch.randn(64, 40))
    if case == "float64":
        norm.double()
    if case == "one row":  # training on one value per channel: PyTorch's own refusal
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            BE.batch_norm_elu(norm, elu, h)
        return
    out = BE.batch_norm_elu(norm, elu, h.requires_grad_())
    assert type(out.grad_fn).__name__ != "_BatchNormELUBackward"
    ref = F.elu(F.batch_norm(h.detach(), None, None, norm.weight.detach(), norm.bias.detach(), True), elu.alpha)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-5, atol=1e-5)


def test_the_trunk_runs_the_native_kernels(native_kernel):
    """The temporal stage (filter + batch norm + ELU in one) and the spatial batch norm + ELU."""
    from bench.encoders.trunk import TSConvTrunk

    out = TSConvTrunk(5, 250)(torch.randn(3, 5, 250))
    seen, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    names = [type(fn).__name__ for fn in seen]
    assert names.count("_BatchNormELUBackward") == 1 and names.count("_NativeTemporalStageBackward") == 1
    from bench.provenance import cpu_block  # a run's record names the kernels and what built them

    assert {"bn_elu", "tsconv_temporal"} <= set(cpu_block()["native"]) and "-O3" in cpu_block()["native"]["bn_elu"]
