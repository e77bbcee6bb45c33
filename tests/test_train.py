"""Trainer and the path of one run: determinism, selection, early stopping, failures, and the leak barrier."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.losses import clip_loss
from bench.method import DataInfo, LossOutput, Method
from bench.protocols import IntraSubject
from bench.records import RunStore
from bench.registry import register_method
from bench.execute import execute_spec
from bench.specs import make_spec, resolve_config
from bench.train import Trainer
from fakes import InMemoryThingsEEG


@register_method("test-linear", description="a linear contrastive encoder for harness tests")
class LinearContrastive(Method):
    defaults = {"scale": 10.0, "fail_on_subject": 0}

    def __init__(self, info, **hp):
        super().__init__(info, **hp)
        self.proj = nn.Linear(info.n_chans * info.n_times, info.feature_dim)
        self.seen_subjects = set()

    def encode_eeg(self, eeg, subject):
        return self.proj(eeg.flatten(1))

    def training_loss(self, batch, state):
        if self.hparams["fail_on_subject"] and int(batch.subject[0]) + 1 == self.hparams["fail_on_subject"]:
            raise RuntimeError("deliberate failure")
        e = nn.functional.normalize(self.encode_eeg(batch.eeg, batch.subject), dim=-1)
        return LossOutput(clip_loss(e, batch.image, self.hparams["scale"]), {"batch_size": float(len(batch.eeg))})


def config(*sets):
    return resolve_config("test-linear", sets=["protocol.val_concepts=4", "train.epochs=6", "train.batch_size=16",
                                               "train.lr=0.01", "eval.kway=[2, 4]", *sets])


def run(ds, tmp_path, *sets, seed=0, subject=1):
    cfg = config(*sets)
    return execute_spec(make_spec("test-linear", cfg, subject, seed, ds), ds, RunStore(tmp_path), progress=False)


def test_completed_record_with_metrics_timings_provenance(tmp_path):
    ds = InMemoryThingsEEG()
    rec = run(ds, tmp_path)
    assert rec.status == "completed", rec.error
    m = rec.metrics
    assert m["top1"] > 2 * m["chance_top1"] and set(m["kway"]) == {"2", "4"}
    assert len(m["val"]["curve"]) == 6 and m["val"]["selected_epoch"] == m["val"]["best_epoch"]
    assert {"load_s", "train_s", "eval_s", "samples_per_s"} <= set(rec.timings)
    assert {"git_commit", "git_dirty", "packages", "device", "data_fingerprint"} <= set(rec.provenance)
    on_disk = json.loads((tmp_path / "runs" / f"{rec.spec_hash}.json").read_text())
    assert on_disk["metrics"]["top1"] == m["top1"] and on_disk["status"] == "completed"
    arrays = np.load(tmp_path / "runs" / f"{rec.spec_hash}.npz")
    assert arrays["similarity"].shape == (12, 12) and arrays["eeg_embeddings"].shape == (12, 8)


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    ds = InMemoryThingsEEG()
    a, b = run(ds, tmp_path / "a"), run(ds, tmp_path / "b")
    assert a.metrics == b.metrics
    c = run(ds, tmp_path / "c", seed=1)
    assert c.metrics["val"]["curve"] != a.metrics["val"]["curve"]


def test_selection_last_and_early_stopping(tmp_path):
    ds = InMemoryThingsEEG()
    last = run(ds, tmp_path / "l", "train.selection=last")
    assert last.metrics["val"]["selected_epoch"] == 6
    stop = run(ds, tmp_path / "s", "train.patience=1", "train.epochs=50", "train.lr=0.5")
    assert stop.metrics["val"]["stopped_early"] and stop.timings["epochs_run"] < 50


def test_failures_are_recorded_with_traceback(tmp_path):
    rec = run(InMemoryThingsEEG(), tmp_path, "method.fail_on_subject=1")
    assert rec.status == "failed" and rec.error["type"] == "RuntimeError"
    assert "deliberate failure" in rec.error["traceback"]
    assert RunStore(tmp_path).read(rec.spec_hash).status == "failed"


def test_leak_barrier_test_data_is_read_only_after_training(tmp_path):
    ds = InMemoryThingsEEG()
    rec = run(ds, tmp_path)
    kinds = [r[0] for r in ds.reads]
    first_test = min(i for i, k in enumerate(kinds) if k.startswith("test"))
    assert all(not k.startswith("test") for k in kinds[:first_test])
    assert all(k.startswith("test") for k in kinds[first_test:]), kinds
    assert rec.status == "completed"


def test_leak_barrier_scrambled_test_data_changes_nothing_before_evaluation(tmp_path):
    """Training with shuffled test features and EEG gives the identical training and validation curve."""
    clean, scrambled = InMemoryThingsEEG(), InMemoryThingsEEG()
    rng = np.random.default_rng(5)
    scrambled._test_image = scrambled._test_image[rng.permutation(12)]
    scrambled._test = {s: -v for s, v in scrambled._test.items()}
    a, b = run(clean, tmp_path / "a"), run(scrambled, tmp_path / "b")
    assert a.metrics["val"] == b.metrics["val"]
    assert a.metrics["top1"] != b.metrics["top1"]


def test_inter_protocol_trains_on_the_others(tmp_path):
    ds = InMemoryThingsEEG(n_subjects=3)
    rec = run(ds, tmp_path, "protocol.name=inter", subject=3)
    assert rec.status == "completed" and rec.split["train_subjects"] == [1, 2]
    assert ("train_eeg", 3) not in ds.reads


@register_method("test-step-probe", description="a scalar with a known gradient, to watch the trainer's steps")
class StepProbe(Method):
    """Loss ``grad · w``: whatever the batch, ``w``'s gradient is ``grad`` per step, so SGD moves ``w`` by exactly
    ``-lr · grad`` and ``w``'s trajectory reads the learning rate of every step. The hooks record what they see."""

    defaults = {"grad": 1.0}

    def __init__(self, info, **hp):
        super().__init__(info, **hp)
        self.proj = nn.Linear(info.n_chans * info.n_times, info.feature_dim)  # only embeds for validation
        self.w = nn.Parameter(torch.zeros(()))
        self.chunks, self.steps, self.recorded = [], [], []

    def encode_eeg(self, eeg, subject):
        return self.proj(eeg.flatten(1))

    def training_loss(self, batch, state):
        (self.recorded if state.recording else self.chunks).append((state.step, state.chunk, state.n_chunks,
                                                                    len(batch.eeg)))
        return LossOutput(self.hparams["grad"] * self.w, {"rows": torch.tensor(float(len(batch.eeg)))})

    def after_backward(self, state):
        self.steps.append({"step": state.step, "w": float(self.w.detach()), "grad": float(self.w.grad),
                           "rows": [float(logs["rows"]) for logs in state.chunk_logs]})


def fit_probe(*sets):
    """A probe trained by plain SGD (no momentum, no decay), keeping the last epoch; the probe and its rows."""
    ds = InMemoryThingsEEG()
    cfg = resolve_config("test-step-probe", sets=["protocol.val_concepts=4", "train.epochs=3", "train.batch_size=16",
                                                  "train.optimizer=sgd", "train.lr=0.1", "train.momentum=0",
                                                  "train.weight_decay=0", "train.selection=last", *sets])
    split = IntraSubject.from_config(cfg).split(ds, 1)
    info = DataInfo(n_chans=ds.n_chans, n_times=ds.n_times, sfreq=ds.sfreq, ch_names=tuple(ds.ch_names),
                    feature_dim=split.train.image.shape[1], n_subjects=len(ds.subjects),
                    n_train_concepts=len(ds.train_concepts), has_text=True)
    method = StepProbe(info, **cfg["method"])
    Trainer(cfg["train"], 0, progress=False).fit(method, split.train, split.val)
    return method, len(split.train)


def learning_rates(probe):
    """The learning rate of each step, from how far it moved ``w`` (the last step's move ends at the final ``w``)."""
    w = [s["w"] for s in probe.steps] + [float(probe.w.detach())]
    return [(a - b) / probe.hparams["grad"] for a, b in zip(w, w[1:])]


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_grad_accumulation_sums_the_chunks_of_one_step(accum):
    probe, n = fit_probe(f"train.grad_accum={accum}", "train.batch_size=10")
    per_epoch = -(-n // 10)
    assert [s["step"] for s in probe.steps] == list(range(3 * per_epoch))  # one after_backward per step
    for s in probe.steps:
        assert s["grad"] == pytest.approx(1.0, abs=1e-6)  # chunk losses / chunks, summed: one step's gradient
        assert len(s["rows"]) == accum and sum(s["rows"]) <= 10
    rows = [sum(s["rows"]) for s in probe.steps]
    assert sum(rows[:per_epoch]) == n and len(set(rows)) == 2  # every row once an epoch, in batches of 10 and 9
    calls = [c for c in probe.chunks if c[0] == 0]
    assert [(c[1], c[2]) for c in calls] == [(j, accum) for j in range(accum)]
    assert [c[3] for c in calls] == probe.steps[0]["rows"]  # after_backward gets the logs of exactly those chunks
    assert learning_rates(probe) == pytest.approx([0.1] * 3 * per_epoch, abs=1e-5)  # one update per step
    # the no-grad recording pass (bench/gather.py) runs once, on the first step; a probe that never gathers skips it after
    assert probe.recorded == ([] if accum == 1 else calls)


def test_grad_clip_bounds_each_update_after_the_hook_saw_the_raw_gradient():
    clipped, _ = fit_probe("method.grad=1000", "train.grad_clip=1.0", "train.lr=0.01")
    assert {s["grad"] for s in clipped.steps} == {1000.0}
    assert learning_rates(clipped) == pytest.approx([0.01 / 1000] * len(clipped.steps), rel=1e-3)
    free, _ = fit_probe("method.grad=1000", "train.lr=0.01")
    assert learning_rates(free) == pytest.approx([0.01] * len(free.steps), rel=1e-3)


def test_adam_normalises_the_step_that_sgd_scales_with_the_gradient():
    adam, _ = fit_probe("method.grad=1000", "train.optimizer=adam", "train.lr=0.01")
    moves = [lr * 1000 for lr in learning_rates(adam)]  # Adam with a constant gradient moves lr per step
    assert moves == pytest.approx([0.01] * len(adam.steps), rel=1e-3)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_schedule_sets_the_learning_rate_of_every_step(schedule):
    probe, n = fit_probe(f"train.schedule={schedule}", "train.warmup_epochs=1" if schedule == "cosine" else
                         "train.step_size=1", "train.step_gamma=0.5")
    per_epoch = -(-n // 16)
    total = 3 * per_epoch
    if schedule == "constant":  # step_size is set but only the step schedule reads it
        expected = [0.1] * total
    elif schedule == "cosine":  # linear warm-up over the first epoch, then cosine from 0.1 to zero
        expected = [0.1 * (s + 1) / per_epoch if s < per_epoch else
                    0.05 * (1 + math.cos(math.pi * (s - per_epoch) / (total - per_epoch))) for s in range(total)]
    else:  # halved after every epoch
        expected = [0.1 * 0.5 ** (s // per_epoch) for s in range(total)]
    assert learning_rates(probe) == pytest.approx(expected, abs=1e-5)
