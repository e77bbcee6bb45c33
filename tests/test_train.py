"""Trainer and the path of one run: determinism, selection, early stopping, failures, and the leak barrier."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from bench.losses import clip_loss
from bench.method import LossOutput, Method
from bench.records import RunStore
from bench.registry import register_method
from bench.runner import execute_spec
from bench.specs import make_spec, resolve_config
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


def test_grad_accumulation_and_clipping_and_schedules_run(tmp_path):
    ds = InMemoryThingsEEG()
    for sets in (["train.grad_accum=2", "train.grad_clip=1.0"], ["train.schedule=cosine", "train.warmup_epochs=1"],
                 ["train.schedule=step", "train.step_size=2", "train.optimizer=sgd"], ["train.optimizer=adam"]):
        rec = run(ds, tmp_path / "_".join(sets), *sets)
        assert rec.status == "completed", (sets, rec.error)
