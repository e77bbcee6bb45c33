"""A run in progress resumes exactly after a kill (bench/checkpoint.py, Trainer._resume).

In process: a run interrupted mid-epoch (KeyboardInterrupt: nothing after the raise runs, as after a kill) resumes
from its last checkpoint and ends bit for bit as an uninterrupted run, under every training setting that keeps state
across epochs; a truncated, corrupt or foreign checkpoint is named and not used; the checkpoint goes once the record
is written (or stays, with train.keep_checkpoint). Through the commands: `bench train` SIGKILLed at a random epoch,
`bench run` killed mid-sweep with its Ray, a Ray Tune trial whose process kills itself (retried by Tune from Tune's
copy of the checkpoint), and DDP under `accelerate launch`, each against an uninterrupted run.
"""
import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench import execute
from bench.checkpoint import (CheckpointError, checkpoint_path, peek_epoch, read_checkpoint, write_checkpoint)
from bench.execute import execute_spec
from bench.losses import clip_loss
from bench.method import LossOutput, Method
from bench.records import RunStore
from bench.registry import register_method
from bench.specs import make_spec, resolve_config
from conftest import BENCH, tune_reports
from fakes import InMemoryThingsEEG

PLUGIN = str(Path(__file__).with_name("resume_plugin.py"))
TINY_SETS = ["protocol.val_concepts=4", "train.epochs=6", "train.batch_size=16", "train.num_threads=1"]

#: the epoch (1-based) in whose second step the in-process methods below raise KeyboardInterrupt; None: never
INTERRUPT = {"epoch": None}


class Interrupted(KeyboardInterrupt):
    """Stands for a kill: execute_spec catches Exception only, so nothing records or cleans up after it."""


def maybe_interrupt(state):
    if INTERRUPT["epoch"] == state.epoch and state.step == (state.epoch - 1) * state.steps_per_epoch + 1:
        INTERRUPT["epoch"] = None
        raise Interrupted


@register_method("test-noisy", description="a linear contrastive encoder drawing from every RNG (resume tests)")
class Noisy(Method):
    """Dropout, torch noise, numpy's and Python's global generators and a Python-level counter all move its loss, so
    a resumed run matches only if each of them is restored."""

    defaults = {"scale": 10.0}

    def __init__(self, info, **hp):
        super().__init__(info, **hp)
        self.proj = nn.Linear(info.n_chans * info.n_times, info.feature_dim)
        self.drop = nn.Dropout(0.2)
        self.epochs_seen = 0  # Python state across epochs: only checkpoint_state carries it over a resume

    def encode_eeg(self, eeg, subject):
        return self.proj(eeg.flatten(1))

    def training_loss(self, batch, state):
        maybe_interrupt(state)
        e = self.drop(self.encode_eeg(batch.eeg, batch.subject)) + 0.05 * torch.randn(1)
        wobble = 1 + 0.05 * float(np.random.randn()) + 0.05 * random.random() + 0.01 * self.epochs_seen
        e = nn.functional.normalize(e, dim=-1)
        return LossOutput(clip_loss(e, batch.image, self.hparams["scale"] * wobble))

    def on_epoch_end(self, state):
        self.epochs_seen += 1
        return {"epochs_seen": float(self.epochs_seen)}

    def checkpoint_state(self):
        return {"epochs_seen": self.epochs_seen}

    def load_checkpoint_state(self, state):
        self.epochs_seen = state["epochs_seen"]


BASE = ["protocol.val_concepts=4", "train.epochs=6", "train.checkpoint_every=1", "train.batch_size=16", "train.lr=0.01",
        "eval.kway=[2, 4]"]


def spec_of(ds, method="test-noisy", *sets):
    return make_spec(method, resolve_config(method, sets=[*BASE, *sets]), 1, 0, ds)


def run(spec, ds, results, interrupt_at=None):
    """execute_spec, interrupted in the second step of epoch ``interrupt_at``; the record, or None if interrupted."""
    INTERRUPT["epoch"] = interrupt_at
    try:
        record = execute_spec(spec, ds, RunStore(results), progress=False)
    except Interrupted:
        return None
    finally:
        INTERRUPT["epoch"] = None
    record.runs_dir = Path(results) / "runs"  # where its saved model is (for same_extras)
    return record


def same_extras(a: dict, a_runs: Path, b: dict, b_runs: Path) -> None:
    """The method's logged extras equal, and the saved selected models (train.save_model) equal tensor for tensor
    (their files differ only in the metadata's finish time)."""
    model_a, model_b = a.get("saved_model"), b.get("saved_model")
    assert {k: v for k, v in a.items() if k != "saved_model"} == {k: v for k, v in b.items() if k != "saved_model"}
    assert (model_a is None) == (model_b is None)
    if model_a is not None:
        from safetensors.torch import load_file

        ta, tb = load_file(a_runs / model_a["file"]), load_file(b_runs / model_b["file"])
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def same_run(a, b):
    assert a.status == b.status == "completed", (a.error, b.error)
    assert a.metrics == b.metrics  # headline, k-way, val curve (train loss, logs, val top-1/top-5 per epoch)
    same_extras(a.extras, a.runs_dir, b.extras, b.runs_dir)


# --- in process -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets,interrupt_at,resumes_at", [
    ((), 3, 3),
    (("train.grad_accum=2", "train.schedule=cosine", "train.warmup_epochs=1", "train.optimizer=sgd",
      "train.grad_clip=1.0"), 2, 2),
    (("train.stop_on=train_loss", "train.patience=1", "train.min_delta=0.05", "train.epochs=20"), 3, 3),
    (("train.selection=last", "train.val_every=2", "train.schedule=step", "train.step_size=2"), 5, 5),
    (("train.checkpoint_every=2",), 4, 3),  # epoch 3 ran, but the last checkpoint is epoch 2's
], ids=["adamw", "accum-cosine-sgd-clip", "early-stop-on-train-loss", "last-val-every-2-step", "every-2"])
def test_an_interrupted_run_resumes_bit_for_bit(tmp_path, caplog, sets, interrupt_at, resumes_at):
    ds = InMemoryThingsEEG()
    spec = spec_of(ds, "test-noisy", *sets)
    reference = run(spec, ds, tmp_path / "ref")
    assert run(spec, ds, tmp_path / "b", interrupt_at) is None
    path = checkpoint_path(RunStore(tmp_path / "b").runs_dir, spec.spec_hash)
    assert peek_epoch(path) == resumes_at - 1 and RunStore(tmp_path / "b").read(spec.spec_hash) is None
    resumed = run(spec, ds, tmp_path / "b")
    same_run(resumed, reference)
    assert f"resumed test-noisy intra sub-01 seed 0 at epoch {resumes_at} of " in caplog.text
    assert [r["epoch"] for r in resumed.provenance["resumed"]] == [resumes_at]
    assert not path.exists()  # the record is out: the checkpoint goes
    if "train.patience=1" in sets:
        assert resumed.metrics["val"]["stopped_early"] and resumed.timings["epochs_run"] < 20


def test_a_run_interrupted_twice_and_during_evaluation_still_ends_identical(tmp_path, caplog, monkeypatch):
    ds = InMemoryThingsEEG()
    spec = spec_of(ds)
    reference = run(spec, ds, tmp_path / "ref")
    assert run(spec, ds, tmp_path / "b", 2) is None
    assert run(spec, ds, tmp_path / "b", 5) is None  # resumed at 2, interrupted again in epoch 5
    original = execute._test_and_record

    def killed_in_evaluation(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(execute, "_test_and_record", killed_in_evaluation)
    with pytest.raises(Interrupted):
        execute_spec(spec, ds, RunStore(tmp_path / "b"), progress=False)
    monkeypatch.setattr(execute, "_test_and_record", original)
    resumed = run(spec, ds, tmp_path / "b")
    same_run(resumed, reference)
    assert [r["epoch"] for r in resumed.provenance["resumed"]] == [2, 5, 7]
    assert "resumed test-noisy intra sub-01 seed 0 after its last epoch (6 of 6) from " in caplog.text


def test_mcdb_resumes_bit_for_bit_with_dropout_spr_noise_and_balance(tmp_path, monkeypatch):
    from bench.methods.mcdb.model import MCDB

    ds = InMemoryThingsEEG(n_times=80, dim=16, n_concepts=24, per_concept=3, n_test=12, n_subjects=1)
    spec = spec_of(ds, "mcdb", "train.epochs=4", "train.lr=1e-3", "method.mcdb=grad", "eval.kway=[2]")
    reference = run(spec, ds, tmp_path / "ref")
    original = MCDB.training_loss

    def interrupted(self, batch, state):
        maybe_interrupt(state)
        return original(self, batch, state)

    monkeypatch.setattr(MCDB, "training_loss", interrupted)
    assert run(spec, ds, tmp_path / "b", 3) is None
    monkeypatch.setattr(MCDB, "training_loss", original)
    resumed = run(spec, ds, tmp_path / "b")
    same_run(resumed, reference)
    assert resumed.provenance["resumed"][0]["epoch"] == 3 and "k_txt" in resumed.extras


def test_mcdb_checkpoint_state_carries_the_noise_seed_and_the_balance_sums():
    from bench.method import DataInfo
    from bench.methods.mcdb.model import MCDB

    info = DataInfo(n_chans=4, n_times=80, sfreq=100.0, ch_names=tuple("abcd"), feature_dim=16, n_subjects=1,
                    n_train_concepts=4, has_text=True)
    a, b = MCDB(info), MCDB(info)
    a._noise_seed = 1234
    a.balance.add(k_img=torch.tensor(0.5), k_txt=torch.tensor(1.0))
    b.load_checkpoint_state(a.checkpoint_state())
    assert b._noise_seed == 1234 and b.balance.means() == a.balance.means() == {"k_img": 0.5, "k_txt": 1.0}


# --- damaged or foreign checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted_checkpoint(tmp_path_factory):
    """(dataset, spec, the checkpoint bytes an interrupted run left after epoch 2, the uninterrupted record)."""
    ds = InMemoryThingsEEG()
    spec = spec_of(ds)
    root = tmp_path_factory.mktemp("damaged")
    reference = run(spec, ds, root / "ref")
    assert run(spec, ds, root / "b", 3) is None
    return ds, spec, checkpoint_path(RunStore(root / "b").runs_dir, spec.spec_hash).read_bytes(), reference


def rewritten(data: bytes, tmp_path: Path, **changes) -> bytes:
    """The checkpoint with some payload fields changed, written properly (a valid file of another run or code)."""
    src = tmp_path / "src.pt"
    src.write_bytes(data)
    payload = {**read_checkpoint(src), **changes}
    write_checkpoint(src, payload)
    return src.read_bytes()


DAMAGE = {
    "truncated": (lambda data, tmp: data[: len(data) // 2], "is truncated"),
    "corrupt": (lambda data, tmp: data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:], "is corrupt"),
    "not-ours": (lambda data, tmp: b"PK\x03\x04" + data, "is not a ThingsBench checkpoint"),
    "empty": (lambda data, tmp: b"", "is not a ThingsBench checkpoint"),
    "other-code": (lambda data, tmp: rewritten(data, tmp, code="0" * 16), "is from other code"),
    "other-run": (lambda data, tmp: rewritten(data, tmp, spec_hash="0" * 16), "is of another run"),
    "other-world": (lambda data, tmp: rewritten(data, tmp, world=2), "is from 2 process(es), this run has 1"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_or_foreign_checkpoint_is_named_and_not_used(tmp_path, caplog, interrupted_checkpoint, kind):
    ds, spec, data, reference = interrupted_checkpoint
    damage, words = DAMAGE[kind]
    path = checkpoint_path(RunStore(tmp_path / "b").runs_dir, spec.spec_hash)
    path.parent.mkdir(parents=True)
    path.write_bytes(damage(data, tmp_path))
    rec = run(spec, ds, tmp_path / "b")
    line = next(r.getMessage() for r in caplog.records if str(path) in r.getMessage())
    assert words in line and "test-noisy intra sub-01 seed 0 starts from epoch 1" in line, line
    assert "resumed" not in rec.provenance and "resumed " not in caplog.text
    same_run(rec, reference)  # from scratch, and nothing of the bad file leaked in
    assert not path.exists()  # overwritten by the run's own checkpoints, then deleted with the record


def test_a_checkpoint_that_does_not_fit_the_method_is_named_and_not_used(tmp_path, caplog, interrupted_checkpoint):
    ds, spec, data, reference = interrupted_checkpoint
    src = tmp_path / "src.pt"
    src.write_bytes(data)
    payload = read_checkpoint(src)
    payload["method"] = {k: torch.zeros(3) for k in payload["method"]}
    path = checkpoint_path(RunStore(tmp_path / "b").runs_dir, spec.spec_hash)
    write_checkpoint(path, payload)
    same_run(run(spec, ds, tmp_path / "b"), reference)
    assert f"checkpoint {path} does not fit this run (its weights have other names or shapes)" in caplog.text


def test_read_checkpoint_verifies_before_unpickling(tmp_path):
    path = tmp_path / "x.pt"
    write_checkpoint(path, {"format": "thingsbench-checkpoint/1", "epoch": 3, "w": torch.ones(2)})
    assert peek_epoch(path) == 3 and torch.equal(read_checkpoint(path)["w"], torch.ones(2))
    body = path.read_bytes()
    path.write_bytes(body[:-1])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is truncated"):
        read_checkpoint(path)
    write_checkpoint(path, {"format": "thingsbench-checkpoint/1", "epoch": 1, "f": print})  # not weights_only-safe
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        read_checkpoint(path)


# --- kept or deleted ------------------------------------------------------------------------------------------------
def test_the_checkpoint_is_deleted_with_the_record_and_kept_with_keep_checkpoint(tmp_path, caplog):
    ds = InMemoryThingsEEG()
    plain, kept = spec_of(ds), spec_of(ds, "test-noisy", "train.keep_checkpoint=true", "train.checkpoint_every=3")
    assert plain.spec_hash == kept.spec_hash  # where files go is not part of the run
    train = {k: v for k, v in plain.config["train"].items() if k not in ("keep_checkpoint", "checkpoint_every")}
    before = dataclasses.replace(plain, config={**plain.config, "train": train})
    assert before.spec_hash == plain.spec_hash  # a spec made before the keys existed hashes as it did
    first = run(plain, ds, tmp_path)
    path = checkpoint_path(RunStore(tmp_path).runs_dir, plain.spec_hash)
    assert first.status == "completed" and not path.exists() and not list(path.parent.iterdir())
    again = run(kept, ds, tmp_path)  # a completed record of this code exists: recomputed from epoch 1 (--force)
    assert "resumed" not in again.provenance and peek_epoch(path) == 6
    same_run(again, first)
    third = run(kept, ds, tmp_path)
    assert "resumed" not in third.provenance and "resumed " not in caplog.text  # a kept checkpoint is no shortcut
    assert read_checkpoint(path)["epoch"] == 6 and read_checkpoint(path)["spec_hash"] == plain.spec_hash


# --- through the commands -------------------------------------------------------------------------------------------
def env():
    out = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # `bench run` starts its own Ray
    return out


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, session id, state) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0])
            except (OSError, IndexError, ValueError):
                pass
    return table


def family(root: int) -> set[int]:
    """``root``, its descendants, and whatever else runs in its session (a local Ray's raylet, workers, agents);
    zombies left out. torchrun's workers start sessions of their own, hence the descendants too."""
    table = process_table()
    out = {pid for pid, (_, sid, state) in table.items() if sid == root and state != "Z"}
    out |= {root} if root in table and table[root][2] != "Z" else set()
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, state) in table.items() if ppid in out and state != "Z"} - out
        out |= children
        grew = bool(children)
    return out - {os.getpid()}


def signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session`` and everything it started, by pid: all are stopped first
    (so none spawns, writes or is reparented away meanwhile), then killed."""
    stopped: set[int] = set()
    while (more := family(proc.pid) - stopped):
        signal_all(more, signal.SIGSTOP)
        stopped |= more
    signal_all(stopped, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while (alive := {p for p in stopped if p in process_table() and process_table()[p][2] != "Z"}):
        assert time.time() < deadline, f"processes outlived SIGKILL: {sorted(alive)}"
        time.sleep(0.2)


def wait_for_checkpoints(results: Path, count: int, epoch: int, proc: subprocess.Popen, timeout=600) -> None:
    """Until ``count`` checkpoints in ``results`` hold at least ``epoch`` each (read from their headers)."""
    deadline = time.time() + timeout
    folder = results / "runs" / ".checkpoints"
    while time.time() < deadline:
        epochs = [peek_epoch(p) or 0 for p in folder.glob("*.pt")] if folder.is_dir() else []
        if len(epochs) >= count and min(epochs) >= epoch:
            return
        assert proc.poll() is None, f"the run ended before its checkpoints reached epoch {epoch}"
        time.sleep(0.02)
    raise AssertionError(f"no {count} checkpoint(s) of epoch {epoch} in {folder} after {timeout} s")


def records(results: Path) -> dict[int, dict]:
    out = {}
    for path in (results / "runs").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["runs_dir"] = results / "runs"  # not a record field: where its saved model is (for same_extras)
        out[rec["subject"]] = rec
    return out


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory):
    """Uninterrupted `bench train` records of nice on sub-01 and sub-02 (side by side), keyed by subject."""
    results = tmp_path_factory.mktemp("reference")
    procs = [subprocess.Popen([BENCH, "train", "--method", "nice", "--subject", str(s), "--data-root", str(tiny_root),
                               "--results-dir", str(results), "--quiet", *sets(*TINY_SETS)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in (1, 2)]
    for proc in procs:
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
    return records(results)


def same_as_reference(rec: dict, ref: dict) -> None:
    assert rec["status"] == "completed", rec.get("error")
    assert rec["spec_hash"] == ref["spec_hash"]
    assert rec["metrics"] == ref["metrics"]
    same_extras(rec["extras"], rec["runs_dir"], ref["extras"], ref["runs_dir"])


def test_bench_train_sigkilled_at_a_random_epoch_resumes_bit_for_bit(tiny_root, tmp_path, reference):
    """Killed at a random moment of epoch 3, 4 or 5 of 6. The moment is a random fraction of the epoch's own length,
    measured as the run goes: a fixed delay outlives the whole run on a fast machine (tiny epochs take ~0.3 s)."""
    rng = random.Random()
    target, fraction = rng.randint(2, 4), rng.uniform(0.0, 1.0)
    args = [BENCH, "train", "--method", "nice", "--subject", "1", "--data-root", str(tiny_root),
            "--results-dir", str(tmp_path), "--quiet", *sets(*TINY_SETS)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_checkpoints(tmp_path, 1, 1, proc)
        first = time.time()
        wait_for_checkpoints(tmp_path, 1, target, proc)
        delay = fraction * (time.time() - first) / (target - 1)
        time.sleep(delay)  # somewhere in epoch target + 1
    finally:
        kill_session(proc)
    assert not list((tmp_path / "runs").glob("*.json")), f"killed after epoch {target} + {delay:.2f} s: too late"
    (path,) = (tmp_path / "runs" / ".checkpoints").glob("*.pt")
    saved = peek_epoch(path)
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    where = f"at epoch {saved + 1} of 6" if saved < 6 else "after its last epoch (6 of 6)"
    assert f"resumed nice intra sub-01 seed 0 {where} from {path}" in rerun.stderr, (target, delay, rerun.stderr)
    rec = records(tmp_path)[1]
    same_as_reference(rec, reference[1])
    assert [r["epoch"] for r in rec["provenance"]["resumed"]] == [saved + 1]
    assert not path.exists()


def test_bench_run_killed_mid_sweep_resumes_every_run_bit_for_bit(tiny_root, tmp_path, reference):
    """The driver and its own local Ray are SIGKILLed while both trials are mid-run; the same command again resumes
    each trial from its checkpoint (the results-folder path: a new sweep has no Tune checkpoint)."""
    target = random.Random().randint(1, 3)
    args = [BENCH, "run", "--method", "nice", "--subjects", "1,2", "--data-root", str(tiny_root),
            "--results-dir", str(tmp_path), "--cpus-per-trial", "1", *sets(*TINY_SETS)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env())
        try:
            wait_for_checkpoints(tmp_path, 2, target, proc)
        finally:
            kill_session(proc)
    saved = {p.stem: peek_epoch(p) for p in (tmp_path / "runs" / ".checkpoints").glob("*.pt")}
    assert len(saved) == 2 and not records(tmp_path), saved
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env())
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for subject, rec in records(tmp_path).items():
        same_as_reference(rec, reference[subject])
        epoch = saved[rec["spec_hash"]] + 1
        assert [r["epoch"] for r in rec["provenance"]["resumed"]] == [epoch]
        assert f"resumed nice intra sub-{subject:02d} seed 0 at epoch {epoch} of 6 from " in rerun.stdout
    assert not list((tmp_path / "runs" / ".checkpoints").glob("*.pt"))


def test_tune_restarts_a_trial_whose_process_died_from_tunes_checkpoint(tiny_root, tmp_path, reference):
    """`nice-killer` SIGKILLs its own Ray worker in epoch 4, after deleting the results-folder checkpoint: only Ray
    Tune's copy of the last epoch the trial reported is left (a trial reports at most one epoch per REPORT_EVERY_S:
    here epoch 1, or a later one on a slow machine). With --max-failures 1 Tune restarts the trial, which resumes at
    the epoch after it and ends as the uninterrupted `bench train` of NICE did."""
    folder = tmp_path / "runs" / ".checkpoints"
    args = [BENCH, "--plugin", PLUGIN, "run", "--method", "nice-killer", "--subjects", "1", "--data-root",
            str(tiny_root), "--results-dir", str(tmp_path), "--max-failures", "1",
            *sets(*TINY_SETS, f"method.kill_marker={tmp_path / 'killed'}", f"method.drop_checkpoints={folder}")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "killed").is_file()  # it did kill itself
    rec = records(tmp_path)[1]
    assert rec["method"] == "nice-killer"
    assert rec["metrics"] == reference[1]["metrics"]
    same_extras(rec["extras"], rec["runs_dir"], reference[1]["extras"], reference[1]["runs_dir"])
    first_life = itertools.takewhile(lambda r: "resumed" not in r, tune_reports(tmp_path, rec["spec_hash"]))
    reported = max(r["epoch"] for r in first_life)  # the last epoch Tune has a copy of
    assert 1 <= reported <= 3 and [r["epoch"] for r in rec["provenance"]["resumed"]] == [reported + 1]
    assert f"resumed nice-killer intra sub-01 seed 0 at epoch {reported + 1} of 6 from " in out.stdout
    assert not list(folder.glob("*.pt"))
    tune_copies = [p for p in (tmp_path / "ray").rglob("checkpoint_*") if p.is_dir()]
    assert tune_copies and all(sorted(f.name for f in p.iterdir()) == ["ended.txt"] for p in tune_copies)


def test_ddp_resumes_on_every_rank_from_the_checkpoint_rank_0_wrote(tiny_root, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    args = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", BENCH, "train", "--method", "nice", "--subject", "1", "--data-root",
            str(tiny_root), "--quiet", *sets(*TINY_SETS, "train.epochs=4", "train.batch_size=32")]
    ref = subprocess.run([*args, "--results-dir", str(tmp_path / "ref")], capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.Popen([*args, "--results-dir", str(tmp_path / "b")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_checkpoints(tmp_path / "b", 1, 2, proc)
    finally:
        kill_session(proc)
    (path,) = (tmp_path / "b" / "runs" / ".checkpoints").glob("*.pt")
    saved = peek_epoch(path)
    rerun = subprocess.run([*args, "--results-dir", str(tmp_path / "b")], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = rerun.stdout + rerun.stderr  # accelerate launch may pass its workers' stderr on as its stdout
    assert said.count(f"resumed nice intra sub-01 seed 0 at epoch {saved + 1} of 4 from {path}") == 1  # by rank 0
    rec, want = records(tmp_path / "b")[1], records(tmp_path / "ref")[1]
    assert rec["provenance"]["num_processes"] == 2 and [r["epoch"] for r in rec["provenance"]["resumed"]] == [saved + 1]
    same_as_reference(rec, want)
