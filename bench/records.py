"""Run specs and run records: the unit of work and its result.

A run is (method, variant, resolved config, protocol, subject, seed, data fingerprint). Its hash names its record::

    <results-dir>/runs/<spec_hash>.json   the record (status, config, metrics, timings, provenance)
    <results-dir>/runs/<spec_hash>.npz    test EEG embeddings and the test similarity matrix, to re-score a run
    <results-dir>/runs/.locks/<spec_hash>.lock   held while a process computes that spec

Records are written atomically, so a killed run leaves either a whole record or none; a record and its arrays are
published together (:meth:`RunStore.publish`: the arrays first, the record last), so a reader never sees one without
the other. Every read checks a completed record's metrics (:mod:`bench.record_check`): a record whose numbers are
impossible or disagree with its saved similarity matrix is *corrupt* — `bench run` recomputes it, `bench leaderboard`
refuses it. Anything that schedules, skips, resumes or aggregates runs goes through this module.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from bench.config import canonical_json
from bench.errors import UserError
from bench.io import os_reason, probe_writable, stage, storage_error
from bench.record_check import record_problem

log = logging.getLogger(__name__)

SCHEMA = "thingsbench-run/1"
COMPLETED, FAILED = "completed", "failed"


class RecordError(UserError, ValueError):
    """A run record is unreadable or not of this schema; the message names the file."""


class CorruptRecordsError(RecordError):
    """Some records of a results folder are unreadable or corrupt; the message lists every one of them."""

    def __init__(self, runs_dir: Path, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} corrupt run record(s) in {runs_dir} (fix or delete them, rerun them with "
                         f"`bench run`, or pass --skip-corrupt to leave them out):\n  " + "\n  ".join(problems))


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
        payload = {"method": self.method, "variant": self.variant, "config": self.config, "protocol": self.protocol,
                   "subject": int(self.subject), "seed": int(self.seed), "data": self.data_fingerprint}
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
    #: file name of the run's arrays (.npz beside the record), set by :meth:`RunStore.publish`; None: none saved
    arrays: str | None = None
    #: why the record read from disk is corrupt (one line naming the file; see bench/record_check.py); None: sound.
    #: Not written: it is the reader's verdict on the file, not part of the run.
    corrupt: str | None = field(default=None, compare=False, repr=False)

    @property
    def spec_hash(self) -> str:
        return self.spec.spec_hash

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "spec_hash": self.spec_hash, "method": self.spec.method, "variant": self.spec.variant,
            "protocol": self.spec.protocol, "subject": int(self.spec.subject), "seed": int(self.spec.seed),
            "status": self.status, "config": self.spec.config, "data_fingerprint": self.spec.data_fingerprint,
            "code_fingerprint": self.code_fingerprint, "arrays": self.arrays,
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
                      error=d.get("error"), code_fingerprint=d.get("code_fingerprint"),
                      arrays=d.get("arrays") if isinstance(d.get("arrays"), str) else None)
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


@dataclass
class Scan:
    """A results folder read in full: its sound records, and one line per corrupt or unreadable one."""

    records: list[RunRecord]
    corrupt: list[str]


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
        """Publish a record without arrays (a failed run, a setup failure)."""
        return self.publish(record, None)

    def publish(self, record: RunRecord, arrays: Mapping[str, Any] | None = None) -> Path:
        """Write ``record`` and, if given, its ``arrays`` (``<spec_hash>.npz``) so that a reader sees both or neither.

        Both are written in full to temporary names first (a full disk fails here, and nothing is published); then
        the old record is removed, the arrays renamed into place and the record renamed last. A crash between the
        renames leaves arrays without a record, which readers ignore and the next publish of the spec replaces —
        never a record beside arrays it was not scored on. Published without arrays, the record says so
        (``"arrays": null``) and an earlier run's arrays are removed. Refused writes are :class:`bench.io.StorageError`.
        """
        path, npz = self.record_path(record.spec_hash), self.arrays_path(record.spec_hash)
        record.arrays = npz.name if arrays is not None else None
        text = json.dumps(record.to_dict(), indent=1, sort_keys=False, default=_json_default) + "\n"
        staged: list[Path] = []
        try:
            if arrays is not None:
                staged.append(stage(npz, lambda tmp: _save_npz(tmp, arrays), suffix=".npz"))
            staged.append(stage(path, lambda tmp: tmp.write_text(text)))
            _rename_in(path, npz, staged)
        finally:
            for tmp in staged:  # renamed ones are gone already; the rest must not linger
                tmp.unlink(missing_ok=True)
        if arrays is not None:
            _check_published(path)
        return path

    def read(self, spec_hash: str) -> RunRecord | None:
        """The spec's record (``corrupt`` says why it cannot be trusted), or None."""
        path = self.record_path(spec_hash)
        if not path.is_file():
            return None
        return read_record(path)

    def is_current(self, spec: RunSpec, code_fingerprint: str) -> bool:
        """Whether ``spec`` has a sound completed record made by the code whose fingerprint is given."""
        rec = self.read(spec.spec_hash)
        return (rec is not None and rec.status == COMPLETED and not rec.corrupt
                and rec.code_fingerprint == code_fingerprint)

    def scan(self, skip_corrupt: bool = False) -> Scan:
        """Every record of the folder, checked. Corrupt or unreadable ones raise :class:`CorruptRecordsError` listing
        them all, unless ``skip_corrupt``: then they are left out and listed in ``Scan.corrupt``."""
        good, bad = [], []
        for path in self._record_files():
            try:
                rec = read_record(path)
            except RecordError as exc:
                if path.exists():  # else it vanished while listed: a rerun is publishing it anew
                    bad.append(str(exc))
                continue
            (bad.append(rec.corrupt) if rec.corrupt else good.append(rec))
        if bad and not skip_corrupt:
            raise CorruptRecordsError(self.runs_dir, bad)
        return Scan(good, bad)

    def records(self, skip_corrupt: bool = False) -> list[RunRecord]:
        """The sound records of the folder (see :meth:`scan`)."""
        return self.scan(skip_corrupt).records

    def _record_files(self) -> list[Path]:
        try:
            names = os.listdir(self.runs_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(self.runs_dir, exc, "read") from exc
        return [self.runs_dir / n for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]

    @contextlib.contextmanager
    def claim(self, spec: RunSpec) -> Iterator[bool]:
        """Hold the spec's lock while computing it; yields False (without waiting) if another process holds it."""
        lock = self.runs_dir / ".locks" / f"{spec.spec_hash}.lock"
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fh = open(lock, "a+")
        except OSError as exc:
            raise storage_error(lock, exc) from exc
        with fh:
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


def check_writable(results_dir: str | Path) -> None:
    """Refuse a results folder whose runs/ cannot take a file, before Ray starts or data is read (StorageError)."""
    probe_writable(Path(results_dir) / "runs", "results folder")


def _save_npz(tmp: Path, arrays: Mapping[str, Any]) -> None:
    import numpy as np

    with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name that lacks it
        np.savez_compressed(fh, **arrays)


def _check_published(path: Path) -> None:
    """Check the pair just published as a reader will, now, while it is cheap: the verdict is cached (runs/.verified/),
    so the first `bench leaderboard` after a sweep need not recompute every k-way accuracy. Best effort: the run is
    published, and a reader checks it again anyway."""
    try:
        published = read_record(path)
    except (RecordError, OSError) as exc:
        log.warning("could not check the record just published: %s", exc)
        return
    if published.corrupt:
        log.warning("published a record its own arrays contradict: %s", published.corrupt)


def _rename_in(path: Path, npz: Path, staged: list[Path]) -> None:
    """Rename the staged files onto their names: the arrays first (when two were staged), the record last."""
    try:
        if len(staged) == 1:
            os.replace(staged[0], path)
            # arrays of an earlier run of this spec: the new record does not name them ("arrays": null), so readers
            # ignore them; removing them is tidiness, and failing to must not undo a published record
            with contextlib.suppress(OSError):
                npz.unlink(missing_ok=True)
            return
        # the old record goes first: between the two renames no record may sit beside arrays it was not scored on
        path.unlink(missing_ok=True)
        os.replace(staged[0], npz)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        os.replace(staged[1], path)
    except OSError as exc:
        npz.unlink(missing_ok=True)  # published arrays without their record: take them back
        raise storage_error(path, exc) from exc


def _file_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_record(path: str | Path, check: bool = True) -> RunRecord:
    """Parse a record; with ``check``, set its ``corrupt`` verdict (see :mod:`bench.record_check`)."""
    path = Path(path)
    for _ in range(3):
        before = _file_key(path)
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
            reason = os_reason(exc) if isinstance(exc, OSError) else exc
            raise RecordError(f"run record {path} is unreadable: {reason}") from exc
        rec = RunRecord.from_dict(data, source=str(path))
        if not check:
            return rec
        rec.corrupt = record_problem(data, path, raw)
        if rec.corrupt is None or _file_key(path) == before:
            return rec
        # replaced while its arrays were read (a rerun publishing the pair): the verdict is on a mixed pair; again
    return rec


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
