"""Executing one run: spec → protocol split (test sealed) → method → Trainer → ZeroShotEvaluator → record.

:func:`claim_and_run` is the one store operation: reuse a completed record of the current code, or claim the spec's
lock, compute it and record it. ``bench train`` (:func:`train_one`), ``bench run``'s Ray trials, ``bench perf`` and
the DDP driver all go through it; :func:`execute_spec` is the computation itself.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench import provenance, seal
from bench.checkpoint import RunCheckpoint
from bench.code_fingerprint import CodeFingerprint, fingerprint_method
from bench.config_rules import TEST_SELECTED_VALIDATIONS
from bench.errors import UserError
from bench.evaluate import ZeroShotEvaluator
from bench.method import Method
from bench.preflight import check_spec
from bench.protocols import EvalSet, Split
from bench.records import COMPLETED, FAILED, RunRecord, RunSpec, RunStore
from bench.registry import METHODS, PROTOCOLS
from bench.saved_model import kept_with
from bench.specs import data_info, flag_overrides, make_spec, open_dataset, recipe_record, resolve_config
from bench.train import FitResult, Trainer, seed_everything

log = logging.getLogger(__name__)


class RunBusyError(UserError, RuntimeError):
    """Another process holds the lock of this run spec."""


@dataclass
class RunOutcome:
    record: RunRecord
    skipped: bool = False
    stale: str | None = None  # why an existing completed record was recomputed (its code changed)


def current_code(spec: RunSpec) -> CodeFingerprint:
    return fingerprint_method(spec.method, spec.config["method"], spec.protocol)


def stale_reason(record: RunRecord | None, code: CodeFingerprint) -> str | None:
    """Why a completed record cannot be reused with the current code (None: reusable, or nothing to reuse)."""
    if record is not None and record.corrupt:  # edited or impossible numbers (bench/record_check.py): recompute
        return f"corrupt record {record.corrupt}"
    if record is None or record.status != COMPLETED or record.code_fingerprint == code.digest:
        return None
    return code.changes_from(record.provenance.get("code"))


@dataclass
class PreparedRun:
    """A run ready to train: its split (test sealed), its freshly built method and the evaluator of its config."""

    split: Split
    method: Method
    evaluator: ZeroShotEvaluator
    load_s: float  # reading the training rows and building the split


def build_method(name: str, cfg: dict, info, seed: int) -> Method:
    seed_everything(seed)  # the initial weights belong to the run: draw them from its seed
    return METHODS.create(name, info=info, **cfg["method"])


def open_selection_validation(spec: RunSpec, ds) -> EvalSet | None:
    """Test-selected validation (``protocol.validation: test`` / ``test-other-subjects``; published protocols only):
    the harness opens the test partition(s) now, *before* the sealed phase, logging a ``test-selected`` warning, and
    scores them as the test will be (the main gallery). None for every other validation kind."""
    protocol = PROTOCOLS.get(spec.protocol).obj.from_config(spec.config)
    val = protocol.selection_validation(ds, spec.subject, label=spec.label)
    return None if val is None else ZeroShotEvaluator.from_config(spec.config).main_view(val)


def prepare_run(spec: RunSpec, ds, selection_val: EvalSet | None = None) -> PreparedRun:
    """Config → split → method, the same for `bench train`, `bench run`, `bench tune` and `bench perf`.

    ``selection_val``: the test-selected validation set :func:`open_selection_validation` opened before the seal
    (required exactly when the protocol validates on a test partition)."""
    t = time.perf_counter()
    protocol = PROTOCOLS.get(spec.protocol).obj.from_config(spec.config)
    split = protocol.split(ds, spec.subject)
    if protocol.test_selected:
        if selection_val is None:
            raise seal.SealError(f"{spec.label}: protocol.validation={protocol.validation} validates on a test "
                                 f"partition, which only `bench train` / `bench run` open (before the sealed phase); "
                                 f"bench tune selects on honest validation only")
        split.val = selection_val
        split.info["n_val_queries"] = len(selection_val)
    load_s = time.perf_counter() - t
    method = build_method(spec.method, spec.config, data_info(ds, split.train), spec.seed)
    return PreparedRun(split, method, ZeroShotEvaluator.from_config(spec.config), load_s)


def check_sealed(spec: RunSpec, run: PreparedRun) -> None:
    """After training and selection: nothing reached the test partition, and it is still unopened."""
    seal.check_unbroken(spec.label)
    if run.split.test.opened:
        raise seal.SealError(f"{spec.label}: the test partition was opened before the evaluator opened it")


def failed_record(spec: RunSpec, exc: BaseException, timings: dict | None = None, split: dict | None = None
                  ) -> RunRecord:
    """The record of a run that raised: its error and traceback, and whatever it had measured."""
    return RunRecord(spec, FAILED, timings=timings or {}, split=split or {},
                     error={"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()})


def record_setup_failure(spec: RunSpec, store: RunStore, exc: BaseException) -> RunRecord:
    """A failure before the run itself could start (e.g. opening the data in a Ray worker): still a record."""
    record = failed_record(spec, exc)
    record.provenance = {**provenance.collect("cpu", spec.data_fingerprint), "finished_at": provenance.now()}
    store.write(record)
    return record


def _test_and_record(spec: RunSpec, run: PreparedRun, fit: FitResult, timings: dict
                     ) -> tuple[RunRecord, dict]:
    """The test record and its arrays (published together by execute_spec: RunStore.publish)."""
    t = time.perf_counter()  # training and model selection are over: only now is the test partition read
    scored = run.evaluator.score(run.method, run.split.test.open(), fit.device)
    timings["eval_s"] = time.perf_counter() - t
    # test_selected: validation read a test partition, so the selected epoch (or the stopping one) saw test data
    metrics = {**scored.metrics, "test_selected": run.split.info.get("validation") in TEST_SELECTED_VALIDATIONS,
               "val": {"best_epoch": fit.best_epoch, "best_top1": fit.best_val_top1,
                       "selected_epoch": fit.selected_epoch, "stopped_early": fit.stopped_early, "curve": fit.curve}}
    arrays = {"eeg_embeddings": scored.eeg, "gallery_embeddings": scored.gallery, "similarity": scored.similarity}
    return RunRecord(spec, COMPLETED, metrics=metrics, timings=timings, split=run.split.info, extras=fit.extras), arrays


def resumable(spec: RunSpec, store: RunStore, code: CodeFingerprint) -> bool:
    """Whether the run may resume from its checkpoint: unless a completed record of this code exists (``--force``
    then recomputes from scratch; a checkpoint kept by ``train.keep_checkpoint`` is no shortcut)."""
    try:
        return not store.is_current(spec, code.digest)
    except UserError:  # an unreadable record is recomputed; it says nothing about the checkpoint
        return True


def execute_spec(spec: RunSpec, ds, store: RunStore, progress: bool = True, on_epoch=None) -> RunRecord:
    """Train, select and test one spec; always returns a record (``failed`` with its traceback on error).

    The fit writes a checkpoint after each epoch and resumes from one this spec and code left (``bench/checkpoint.py``);
    it is deleted once the completed record is written, and kept after a failure, so a rerun resumes."""
    started, timings, code = provenance.now(), {}, current_code(spec)
    run, fit, main, arrays = None, None, True, None
    checkpoint = RunCheckpoint.for_run(store.runs_dir, spec, code.digest, resume=resumable(spec, store, code))
    try:
        selection_val = open_selection_validation(spec, ds)  # None unless validation is test-selected (labelled)
        with seal.sealed(f"{spec.label} is being built, trained and selected"):
            run = prepare_run(spec, ds, selection_val)
            trainer = Trainer(spec.config["train"], spec.seed, run.evaluator, progress=progress,
                              log_prefix=f"{spec.label} ", on_epoch=on_epoch, checkpoint=checkpoint)
            fit = trainer.fit(run.method, run.split.train, run.split.val)
        check_sealed(spec, run)
        main = trainer.accelerator is None or trainer.accelerator.is_main_process
        timings.update(load_s=run.load_s, train_s=fit.train_s, samples_per_s=fit.samples_per_s,
                       epochs_run=fit.epochs_run, checkpoint_s=fit.checkpoint_s)
        record, arrays = _test_and_record(spec, run, fit, timings)
    except Exception as exc:  # the record says what failed; the grid goes on
        log.error("%s failed: %s", spec.label, exc)
        record = failed_record(spec, exc, timings, run.split.info if run else None)
    record.code_fingerprint = code.digest
    record.provenance = {**provenance.collect(fit.device if fit else "cpu", spec.data_fingerprint,
                                              fit.num_processes if fit else 1, fit.mixed_precision if fit else "no",
                                              preprocessing=getattr(ds, "preprocessing", None), dataset=ds),
                         "recipe": recipe_record(spec.method, spec.config), "code": code.to_dict(),
                         "started_at": started, "finished_at": provenance.now(),
                         **({"resumed": fit.resumed} if fit is not None and fit.resumed else {})}
    if main:
        with kept_with(store, record, run.method if run else None, ds):  # the model file before the record naming it
            store.publish(record, arrays)  # the record and its .npz appear together or not at all
        if record.status == COMPLETED:  # after the record: a kill in between leaves a checkpoint, not a lost run
            checkpoint.discard()
    return record


def _reuse(spec: RunSpec, store: RunStore, code: CodeFingerprint) -> tuple[RunOutcome | None, str | None]:
    """(the outcome of reusing a current completed record, or None; why an existing one is stale)"""
    done = store.read(spec.spec_hash)
    reason = stale_reason(done, code)
    if done is not None and done.status == COMPLETED and reason is None:
        return RunOutcome(done, skipped=True), None
    return None, reason


def claim_and_run(spec: RunSpec, store: RunStore, compute: Callable[[], RunRecord], force: bool = False
                  ) -> RunOutcome:
    """The one store operation: reuse a completed record of the current code (unless ``force``), else hold the
    spec's lock while ``compute`` produces (and writes) its record."""
    code, reason = current_code(spec), None
    if not force:
        reused, reason = _reuse(spec, store, code)
        if reused:
            return reused
    if _distributed_rank() > 0:  # under torchrun / accelerate launch, rank 0 holds the lock for the process group
        return RunOutcome(compute(), stale=reason)
    with store.claim(spec) as claimed:
        if not claimed:
            raise RunBusyError(f"{spec.label} ({spec.spec_hash}) is being computed by another process "
                               f"(lock in {store.runs_dir / '.locks'})")
        if not force:  # finished by another process while we waited to claim it
            reused, _ = _reuse(spec, store, code)
            if reused:
                return reused
        if reason:
            log.warning("%s: stale record recomputed (%s)", spec.label, reason)
        return RunOutcome(compute(), stale=reason)


def run_spec(spec: RunSpec, ds, store: RunStore, force: bool = False, progress: bool = True, on_epoch=None
             ) -> RunOutcome:
    """:func:`claim_and_run` with :func:`execute_spec` as the computation."""
    return claim_and_run(spec, store, lambda: execute_spec(spec, ds, store, progress, on_epoch), force)


def _distributed_rank() -> int:
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def train_one(method: str, subject: int, seed: int, protocol: str | None = None, data_root: str | Path | None = None,
              results_dir: str | Path = "results", config_files=(), sets=(), force: bool = False,
              progress: bool = True) -> RunOutcome:
    """`bench train`: one run of ``method`` on one subject with one seed."""
    cfg = resolve_config(method, config_files, sets, flag_overrides(protocol, data_root))
    ds = open_dataset(cfg)
    spec = make_spec(method, cfg, subject, seed, ds)
    check_spec(spec, ds)  # before the record and the first epoch: a run that cannot finish is refused now
    return run_spec(spec, ds, RunStore(results_dir), force=force, progress=progress)
