"""The path of one run: spec → dataset → protocol split (test sealed) → method → Trainer → ZeroShotEvaluator → record.

``bench train`` calls :func:`train_one`; ``bench run`` builds the same specs and sends each through
:func:`execute_spec` inside a Ray trial. Both skip a spec that already has a completed record.
"""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance, seal
from bench.code_fingerprint import CodeFingerprint, fingerprint_method
from bench.config import resolve
from bench.errors import UserError
from bench.evaluate import ZeroShotEvaluator
from bench.io import atomic_path
from bench.method import DataInfo
from bench.preflight import check_spec
from bench.protocols import Split
from bench.records import COMPLETED, FAILED, RunRecord, RunSpec, RunStore
from bench.registry import METHODS, PROTOCOLS, method_recipe
from bench.train import Trainer, seed_everything

log = logging.getLogger(__name__)


class RunBusyError(UserError, RuntimeError):
    """Another process holds the lock of this run spec."""


def resolve_config(method: str, config_files=(), sets=(), overrides: dict[str, Any] | None = None) -> dict:
    """The resolved config of ``method``; ``overrides`` are dotted keys set by CLI flags (e.g. ``data.root``)."""
    entry = METHODS.get(method)
    # JSON is valid YAML, so flag values pass through the same --set parser (and its validation) as user input
    flag_sets = [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items() if v is not None]
    return resolve(method, method_defaults=getattr(entry.obj, "defaults", {}), config_files=config_files,
                   sets=[*sets, *flag_sets], find_recipe=method_recipe)


def open_dataset(cfg: dict):
    from bench.data.dataset import ThingsEEG

    d = cfg["data"]
    return ThingsEEG.open(d["root"], channels=d["channels"], tmin=d["tmin"], tmax=d["tmax"], features=d["features"],
                          prompt_template=d["prompt_template"], underscores_to_spaces=d["prompt_underscores_to_spaces"],
                          synthetic_preset=d["synthetic_preset"])


def fingerprint_subjects(ds, protocol: str, subject: int) -> list[int]:
    """The subjects whose files a run reads: intra reads one, leave-one-subject-out reads all."""
    return [subject] if protocol == "intra" else list(ds.subjects)


def make_spec(method: str, cfg: dict, subject: int, seed: int, ds, variant: str | None = None) -> RunSpec:
    protocol = cfg["protocol"]["name"]
    return RunSpec(method=method, config=cfg, protocol=protocol, subject=int(subject), seed=int(seed),
                   data_fingerprint=ds.fingerprint(fingerprint_subjects(ds, protocol, subject)), variant=variant)


def data_info(ds, split: Split) -> DataInfo:
    return DataInfo(n_chans=ds.n_chans, n_times=ds.n_times, sfreq=float(ds.sfreq), ch_names=tuple(ds.ch_names),
                    feature_dim=int(split.train.image.shape[1]), n_subjects=len(ds.subjects),
                    n_train_concepts=len(ds.train_concepts), has_text=split.train.text is not None)


@dataclass
class RunOutcome:
    record: RunRecord
    skipped: bool = False
    stale: str | None = None  # why an existing completed record was recomputed (its code changed)


def current_code(spec: RunSpec) -> CodeFingerprint:
    return fingerprint_method(spec.method, spec.config["method"], spec.protocol)


def stale_reason(record: RunRecord | None, code: CodeFingerprint) -> str | None:
    """Why a completed record cannot be reused with the current code (None: reusable, or nothing to reuse)."""
    if record is None or record.status != COMPLETED or record.code_fingerprint == code.digest:
        return None
    return code.changes_from(record.provenance.get("code"))


def _train_sealed(spec: RunSpec, ds, split: Split, progress: bool, on_epoch):
    """Build, train and select the method with the test partition sealed; then check nothing reached it."""
    cfg = spec.config
    with seal.sealed(f"{spec.label} is being built, trained and selected"):
        seed_everything(spec.seed)  # the initial weights belong to the run: draw them from its seed
        method = METHODS.create(spec.method, info=data_info(ds, split), **cfg["method"])
        evaluator = ZeroShotEvaluator.from_config(cfg)
        trainer = Trainer(cfg["train"], spec.seed, evaluator, progress=progress, log_prefix=f"{spec.label} ",
                          on_epoch=on_epoch)
        fit = trainer.fit(method, split.train, split.val)
    seal.check_unbroken(spec.label)
    if split.test.opened:
        raise seal.SealError(f"{spec.label}: the test partition was opened before the evaluator opened it")
    return method, evaluator, trainer, fit


def execute_spec(spec: RunSpec, ds, store: RunStore, progress: bool = True, on_epoch=None) -> RunRecord:
    """Train, select and test one spec; always returns a record (``failed`` with its traceback on error)."""
    cfg = spec.config
    started = provenance.now()
    timings: dict = {}
    split_info: dict = {}
    fit, accelerator = None, None
    code = current_code(spec)
    try:
        t = time.perf_counter()
        protocol = PROTOCOLS.get(spec.protocol).obj.from_config(cfg)
        split = protocol.split(ds, spec.subject)
        split_info = split.info
        timings["load_s"] = time.perf_counter() - t

        method, evaluator, trainer, fit = _train_sealed(spec, ds, split, progress, on_epoch)
        accelerator = trainer.accelerator
        timings.update(train_s=fit.train_s, samples_per_s=fit.samples_per_s, epochs_run=fit.epochs_run)

        # training and model selection are over: only now is the test partition read
        t = time.perf_counter()
        scored = evaluator.score(method, split.test.open(), fit.device)
        timings["eval_s"] = time.perf_counter() - t
        metrics = {**scored.metrics,
                   "val": {"best_epoch": fit.best_epoch, "best_top1": fit.best_val_top1,
                           "selected_epoch": fit.selected_epoch, "stopped_early": fit.stopped_early,
                           "curve": fit.curve}}
        record = RunRecord(spec, COMPLETED, metrics=metrics, timings=timings, split=split_info, extras=fit.extras)
        if accelerator is None or accelerator.is_main_process:
            with atomic_path(store.arrays_path(spec.spec_hash), suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, eeg_embeddings=scored.eeg, gallery_embeddings=scored.gallery,
                                        similarity=scored.similarity)
    except Exception as exc:  # the record says what failed; the grid goes on
        log.error("%s failed: %s", spec.label, exc)
        record = RunRecord(spec, FAILED, timings=timings, split=split_info,
                           error={"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()})
    device = fit.device if fit else "cpu"
    record.code_fingerprint = code.digest
    record.provenance = {**provenance.collect(device, spec.data_fingerprint,
                                              fit.num_processes if fit else 1, fit.mixed_precision if fit else "no",
                                              preprocessing=getattr(ds, "preprocessing", None)),
                         "code": code.to_dict(), "started_at": started, "finished_at": provenance.now()}
    if accelerator is None or accelerator.is_main_process:
        store.write(record)
    return record


def _reuse(spec: RunSpec, store: RunStore, code: CodeFingerprint) -> tuple[RunOutcome | None, str | None]:
    """(the outcome of reusing a current completed record, or None; why an existing one is stale)"""
    done = store.read(spec.spec_hash)
    reason = stale_reason(done, code)
    if done is not None and done.status == COMPLETED and reason is None:
        return RunOutcome(done, skipped=True), None
    return None, reason


def run_spec(spec: RunSpec, ds, store: RunStore, force: bool = False, progress: bool = True, on_epoch=None
             ) -> RunOutcome:
    """Reuse a completed record of the current code (unless ``force``); otherwise claim the spec and execute it."""
    code, reason = current_code(spec), None
    if not force:
        reused, reason = _reuse(spec, store, code)
        if reused:
            return reused
    if _distributed_rank() > 0:  # under torchrun / accelerate launch, rank 0 holds the lock for the process group
        return RunOutcome(execute_spec(spec, ds, store, progress, on_epoch), stale=reason)
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
        return RunOutcome(execute_spec(spec, ds, store, progress, on_epoch), stale=reason)


def _distributed_rank() -> int:
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def train_one(method: str, subject: int, seed: int, protocol: str | None = None, data_root: str | Path | None = None,
              results_dir: str | Path = "results", config_files=(), sets=(), force: bool = False,
              progress: bool = True) -> RunOutcome:
    """`bench train`: one run of ``method`` on one subject with one seed."""
    overrides = {"protocol.name": protocol, "data.root": str(Path(data_root).resolve()) if data_root else None}
    cfg = resolve_config(method, config_files, sets, overrides)
    ds = open_dataset(cfg)
    spec = make_spec(method, cfg, subject, seed, ds)
    check_spec(spec, ds)  # before the record and the first epoch: a run that cannot finish is refused now
    return run_spec(spec, ds, RunStore(results_dir), force=force, progress=progress)
