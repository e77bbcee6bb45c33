"""`bench perf`'s measuring instruments: the reference code's module structure computes our encoder's function (so
the speed-up it reports is of the same model), the counted FLOPs include the backward pass, the GEMM peak is a rate
(issue 21). No speed thresholds: those belong to `bench perf`, never to timed tests."""
import copy

import numpy as np
import pytest
import torch

from test_baselines import build, data_info, make_batch
from test_encoders import assert_same_function

from bench.encoders.trunk import TSConvTrunk
from bench.method import TrainState
from bench.perf.peak import bf16_supported, gemm_peak, machine_peaks, step_flops
from bench.perf.reference import ReferenceLoop, ReferenceTSConv, reference_structure
from bench.protocols import EvalSet, TrainSet


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reference_structure_computes_our_trunk(mode):
    """NICE's Conv2d → AvgPool2d → BN → ELU → Conv2d(C,1) → BN → ELU → Dropout → Conv2d(1) → flatten, with our
    weights copied across: same outputs (dropout masks included), gradients and batch-norm statistics."""
    torch.manual_seed(0)
    trunk = TSConvTrunk(n_chans=63, n_times=250)
    with torch.no_grad():
        for bn in (trunk.temporal[2], trunk.spatial[1]):
            bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2.0)
    ref = ReferenceTSConv.from_trunk(copy.deepcopy(trunk))
    assert [type(m).__name__ for m in ref.tsconv] == ["Conv2d", "AvgPool2d", "BatchNorm2d", "ELU", "Conv2d",
                                                      "BatchNorm2d", "ELU", "Dropout"]
    assert_same_function(trunk, ref, trunk, ref, torch.randn(6, 63, 250), mode)


def nice_and_reference(name="nice", n_chans=63, feature_dim=32):
    info = data_info(n_chans, 250, feature_dim=feature_dim)
    torch.manual_seed(0)
    ours = build(name, info)
    theirs = copy.deepcopy(ours)
    return info, ours, theirs, reference_structure(theirs)


@pytest.mark.parametrize("name,replaced", [("nice", 1), ("atm", 1), ("mcdb", 1), ("eegproject", 0)])
def test_reference_structure_swaps_every_trunk_and_keeps_the_method(name, replaced):
    info, ours, theirs, n = nice_and_reference(name, n_chans=17)
    assert n == replaced
    assert not any(isinstance(m, TSConvTrunk) for m in theirs.modules())
    assert sum(isinstance(m, ReferenceTSConv) for m in theirs.modules()) == replaced
    batch = make_batch(info)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_eeg(batch.eeg, batch.subject), ours.encode_eeg(batch.eeg, batch.subject),
                                   rtol=1e-5, atol=1e-5)


def test_step_flops_count_forward_and_backward_and_leave_the_model_alone():
    """NICE at 63 × 250 → 768: ~60 MFLOP per sample forward + backward (~24 forward alone); counting moves nothing."""
    info, method, _, _ = nice_and_reference(feature_dim=768)
    batch = make_batch(info, concept=tuple(range(8)))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    flops = step_flops(method, batch, TrainState(epoch=1, epochs=1, step=0, steps_per_epoch=1))
    assert 55e6 < flops / 8 < 65e6
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())  # BN statistics put back
    assert all(p.grad is None for p in method.parameters())


def test_gemm_peak_is_a_rate_and_bf16_is_only_timed_where_native():
    cpu = torch.device("cpu")
    n = 128
    peak = gemm_peak(cpu, torch.float32, n=n, min_s=0.02, repeats=2)
    assert 1e6 < peak < 1e14
    assert isinstance(bf16_supported(cpu), bool)
    if bf16_supported(cpu):  # the bf16 path of `bench perf --device cuda`, exercised on a CPU that has bf16
        assert gemm_peak(cpu, torch.bfloat16, n=n, min_s=0.02, repeats=2) > 1e6


def test_machine_peaks_reports_bf16_none_without_native_bf16(monkeypatch):
    import bench.perf.peak as peak

    monkeypatch.setattr(peak, "GEMM_N", 64)
    monkeypatch.setattr(peak, "bf16_supported", lambda device: False)
    monkeypatch.setattr(peak, "gemm_peak", lambda device, dtype=torch.float32, min_s=1.0: 1.0e9)
    assert peak.machine_peaks(torch.device("cpu")) == {"float32": 1.0e9, "bfloat16": None}


def test_reference_loop_trains_and_validates_as_nice_does():
    info, _, theirs, _ = nice_and_reference(n_chans=17)
    rng = np.random.default_rng(0)
    n = 12
    train = TrainSet(eeg=rng.standard_normal((n, 17, 250)).astype(np.float16), row_image=np.arange(n),
                     row_concept=np.arange(n), row_subject=np.zeros(n, dtype=np.int64),
                     image=rng.standard_normal((n, 32)).astype(np.float32),
                     text=rng.standard_normal((n, 32)).astype(np.float32))
    cfg = {"optimizer": "adam", "lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0}
    loop = ReferenceLoop(theirs, train, cfg, torch.device("cpu"), batch_size=4)
    assert not loop.optimizer.defaults["fused"]  # the reference's torch.optim.Adam(...): torch's default form
    before = theirs.encoder.trunk.tsconv[4].weight.detach().clone()
    assert loop.run(2) > 0 and loop.state.step == 2
    assert not torch.equal(before, theirs.encoder.trunk.tsconv[4].weight)  # the reference structure was trained
    val = EvalSet(eeg=train.eeg[:6].astype(np.float32), gallery=train.image[:6], fold=np.zeros(6, dtype=np.int64),
                  subject=np.zeros(6, dtype=np.int64), concept=np.arange(6), text=train.text)
    bn = theirs.encoder.trunk.tsconv[2].running_mean.clone()
    assert loop.validate(val) > 0 and theirs.training
    assert torch.equal(bn, theirs.encoder.trunk.tsconv[2].running_mean)  # eval mode: statistics untouched


def test_peak_fractions_are_restated_against_the_best_peak_timing():
    """A GEMM peak timed while another tenant held the cores is too low and flatters every fraction: bench perf times
    it before and after the training steps and states each loop's fraction against the higher one."""
    from bench.perf import _best_peak
    from bench.perf.throughput import against_best_peak, limit_figures

    low, high = {"gemm_n": 8, "float32": 40e9, "bfloat16": None}, {"gemm_n": 8, "float32": 67e9, "bfloat16": None}
    best = _best_peak(low, high)
    assert best["float32"] == 67e9 and best["bfloat16"] is None and best["float32_timings"] == [40e9, 67e9]
    assert _best_peak(high, low)["float32"] == 67e9
    entry = {"ours": {"precision": "no", **limit_figures(26e6, 1000, "no", low)},
             "reference": {"precision": "fp32", **limit_figures(8e6, 1000, "fp32", low)}}
    assert entry["ours"]["peak_fraction"] == pytest.approx(26 / 40)
    against_best_peak([entry], best)
    assert entry["ours"]["peak_fraction"] == pytest.approx(26 / 67)
    assert entry["reference"]["peak_fraction"] == pytest.approx(8 / 67)
