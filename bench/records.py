"""Run specs and run records: the unit of work and its result.

A run is (method, variant, resolved config, protocol, subject, seed, data fingerprint). Its hash names its record::

    <results-dir>/runs/<spec_hash>.json   the record (status, config, metrics, timings, provenance)
    <results-dir>/runs/<spec_hash>.npz    test EEG embeddings and the test similarity matrix, to re-score a run
    <results-dir>/runs/.locks/<spec_hash>.lock   held while a process computes that spec

Records are written atomically, so a killed run leaves either a whole record or none; anything that schedules,
skips, resumes or aggregates runs goes through this module.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bench.config import canonical_json
from bench.errors import UserError
from bench.io import atomic_write_text

SCHEMA = "thingsbench-run/1"
COMPLETED, FAILED = "completed", "failed"


class RecordError(UserError, ValueError):
    """A run record is unreadable or not of this schema; the message names the file."""


#: config keys that decide what a run leaves on disk, never its numbers: left out of the spec hash, so that setting one
#: neither makes another run nor loses the checkpoint of a run in progress (bench/checkpoint.py)
UNHASHED_KEYS = (("train", "checkpoint_every"), ("train", "keep_checkpoint"))


def hashed_config(config: dict) -> dict:
    """``config`` without :data:`UNHASHED_KEYS` (a spec made before they existed hashes as it did)."""
    out = dict(config)
    for section, key in UNHASHED_KEYS:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


@dataclass(frozen=True)
class RunSpec:
    method: str
    config: dict
    protocol: str
    subject: int
    seed: int
    data_fingerprint: str
    variant: str | None = None  # ablation label (e.g. "base", "+text"); None for the method as configured
    #: the method's declared ablation ({"order": [labels], "full_label": label}) when `bench run --ablation` made the
    #: spec: how its ablation table reads. Not part of the hash or of equality: it describes the run, it is not one.
    ablation: dict | None = field(default=None, compare=False)

    @property
    def spec_hash(self) -> str:
        payload = {"method": self.method, "variant": self.variant, "config": hashed_config(self.config),
                   "protocol": self.protocol, "subject": int(self.subject), "seed": int(self.seed),
                   "data": self.data_fingerprint}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        name = f"{self.method}[{self.variant}]" if self.variant else self.method
        return f"{name} {self.protocol} sub-{int(self.subject):02d} seed {self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(**{k: d[k] for k in ("method", "config", "protocol", "subject", "seed", "data_fingerprint")},
                   variant=d.get("variant"), ablation=d.get("ablation"))


@dataclass
class RunRecord:
    """One run's outcome. ``metrics`` holds percentages; see docs/run-records.md for every field."""

    spec: RunSpec
    status: str
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    error: dict | None = None
    #: short hex fingerprint of the code that computed the run; not part of the spec: the same spec rerun by changed
    #: code is the same cell, and the leaderboard keeps the two versions apart. None where it was not recorded.
    code_fingerprint: str | None = None

    @property
    def spec_hash(self) -> str:
        return self.spec.spec_hash

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "spec_hash": self.spec_hash, "method": self.spec.method, "variant": self.spec.variant,
            "protocol": self.spec.protocol, "subject": int(self.spec.subject), "seed": int(self.spec.seed),
            "status": self.status, "config": self.spec.config, "data_fingerprint": self.spec.data_fingerprint,
            "code_fingerprint": self.code_fingerprint,
            "metrics": self.metrics, "timings": self.timings, "provenance": self.provenance, "split": self.split,
            "extras": self.extras, "error": self.error,
            # only where a sweep declared it, so that the records of every other run keep their fields
            **({"ablation": self.spec.ablation} if self.spec.ablation is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "record") -> "RunRecord":
        if d.get("schema") != SCHEMA:
            raise RecordError(f"{source}: schema {d.get('schema')!r}, expected {SCHEMA!r}")
        try:
            spec = RunSpec(method=d["method"], config=d["config"], protocol=d["protocol"], subject=d["subject"],
                           seed=d["seed"], data_fingerprint=d["data_fingerprint"], variant=d.get("variant"),
                           ablation=d.get("ablation"))
            rec = cls(spec=spec, status=d["status"], metrics=d.get("metrics") or {}, timings=d.get("timings") or {},
                      provenance=d.get("provenance") or {}, split=d.get("split") or {}, extras=d.get("extras") or {},
                      error=d.get("error"), code_fingerprint=d.get("code_fingerprint"))
        except KeyError as exc:
            raise RecordError(f"{source}: missing field {exc.args[0]!r}") from None
        if (problem := _ablation_problem(spec.ablation)) is not None:
            raise RecordError(f"{source}: {problem}")
        if rec.status not in (COMPLETED, FAILED):
            raise RecordError(f"{source}: status {rec.status!r}, expected {COMPLETED!r} or {FAILED!r}")
        if d.get("spec_hash") != spec.spec_hash:
            raise RecordError(f"{source}: spec_hash {d.get('spec_hash')!r} does not match its contents "
                              f"({spec.spec_hash}); the record was edited or written by another version")
        return rec


class RunStore:
    """The runs folder of one results directory."""

    def __init__(self, results_dir: str | Path):
        self.results_dir = Path(results_dir)
        self.runs_dir = self.results_dir / "runs"

    def record_path(self, spec_hash: str) -> Path:
        return self.runs_dir / f"{spec_hash}.json"

    def arrays_path(self, spec_hash: str) -> Path:
        return self.runs_dir / f"{spec_hash}.npz"

    def write(self, record: RunRecord) -> Path:
        path = self.record_path(record.spec_hash)
        atomic_write_text(path, json.dumps(record.to_dict(), indent=1, sort_keys=False, default=_json_default) + "\n")
        return path

    def read(self, spec_hash: str) -> RunRecord | None:
        path = self.record_path(spec_hash)
        if not path.is_file():
            return None
        return read_record(path)

    def is_current(self, spec: RunSpec, code_fingerprint: str) -> bool:
        """Whether ``spec`` has a completed record made by the code whose fingerprint is given."""
        rec = self.read(spec.spec_hash)
        return rec is not None and rec.status == COMPLETED and rec.code_fingerprint == code_fingerprint

    def records(self) -> list[RunRecord]:
        if not self.runs_dir.is_dir():
            return []
        return [read_record(p) for p in sorted(self.runs_dir.glob("*.json")) if not p.name.startswith(".")]

    @contextlib.contextmanager
    def claim(self, spec: RunSpec) -> Iterator[bool]:
        """Hold the spec's lock while computing it; yields False (without waiting) if another process holds it."""
        lock_dir = self.runs_dir / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{spec.spec_hash}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()}\n")
                fh.flush()
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def read_record(path: str | Path) -> RunRecord:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"run record {path} is unreadable: {exc}") from exc
    return RunRecord.from_dict(data, source=str(path))


def _ablation_problem(value: Any) -> str | None:
    """What is wrong with a record's ablation declaration (records are files anyone can edit); None: nothing."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"order", "full_label"}:
        return 'ablation must be null or {"order": [labels], "full_label": label}'
    order = value["order"]
    if not isinstance(order, list) or not all(isinstance(v, str) for v in order) or len(set(order)) != len(order):
        return "ablation.order must be a list of distinct labels"
    if not isinstance(value["full_label"], str):
        return "ablation.full_label must be a string"
    return None


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
