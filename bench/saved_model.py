"""The selected model of a run, kept beside its record, and used again: :func:`load_run`, embed, predict.

A completed run (with ``train.save_model: true``, the default) leaves, beside its record::

    <results-dir>/runs/<spec_hash>.safetensors   the method's state_dict: the selected weights, the ones the test was
                                                 scored with; metadata key "thingsbench" holds a JSON document with the
                                                 resolved config, the DataInfo, the method name, the spec hash, the
                                                 code fingerprint and the data selection (channels, window, averaging)

It is written (atomically) before the record, and the record names it (``extras.saved_model``: file, bytes, sha256),
so a record never points to a missing or half-written model. The record is the authority: a model file that no
record names, or whose bytes differ from what the record says, is not loaded.

:func:`load_run` rebuilds the method through the METHODS registry from the saved config and DataInfo and loads the
weights strictly. :func:`read_run_eeg` reads an EEG file of any supported layout through the dataset's own readers
and cache, with the run's channel/time selection and test-repetition averaging, so `bench embed` on a run's own test
file reproduces the embeddings the evaluator scored.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bench.errors import UserError
from bench.io import atomic_path, current_umask
from bench.method import DataInfo, Method
from bench.records import COMPLETED, RecordError, RunRecord, RunStore, read_record
from bench.registry import METHODS, PROTOCOLS, RegistryError

log = logging.getLogger(__name__)

MODEL_SCHEMA = "thingsbench-model/1"
META_KEY = "thingsbench"
RECORD_KEY = "saved_model"  # the record's extras entry naming the model file
MODEL_SUFFIX = ".safetensors"
#: the evaluator's default batch: the same batches give the same float32 sums, so embeddings match bit for bit
EMBED_BATCH = 1024
_TIME_EPS = 1e-6  # as bench.data.dataset: window edges are compared with float times


class ModelError(UserError, ValueError):
    """A run's model cannot be found, read, rebuilt or applied; the message names the folder or file."""


class CodeChangedWarning(UserWarning):
    """The method's code changed since the run; its weights are loaded anyway (they may still fit)."""


def model_path(store: RunStore, spec_hash: str) -> Path:
    return store.runs_dir / f"{spec_hash}{MODEL_SUFFIX}"


# --- saving -------------------------------------------------------------------------------------------------------
def save_with_record(store: RunStore, record: RunRecord, method: Method | None, ds) -> Path | None:
    """Write the selected model of a completed run and name it in ``record.extras``; the file written, or None.

    Called before the record is published, on the main process only. A failure to save is logged and noted in the
    record: the scores stand without the model."""
    if record.status != COMPLETED or method is None:
        return None
    if not record.spec.config.get("train", {}).get("save_model", True):
        return None
    path = model_path(store, record.spec_hash)
    try:
        record.extras[RECORD_KEY] = write_model(path, method, model_metadata(record, method.info, ds))
    except Exception as exc:  # noqa: BLE001 - the run's numbers are valid without the model file
        log.warning("%s: the selected model could not be saved: %s", record.spec.label, exc)
        record.extras[RECORD_KEY] = {"error": f"{type(exc).__name__}: {exc}"}
        return None
    return path


@contextlib.contextmanager
def kept_with(store: RunStore, record: RunRecord, method: Method | None, ds) -> Iterator[None]:
    """The model file first (:func:`save_with_record`), then the block that publishes the record naming it; if the
    publish fails (a full disk), the model goes too, so no model file outlives a record that was never written."""
    path = save_with_record(store, record, method, ds)
    try:
        yield
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise


def model_metadata(record: RunRecord, info: DataInfo, ds) -> dict:
    """What rebuilding and applying the model needs, besides its weights."""
    spec, data = record.spec, record.spec.config["data"]
    knows_subject = bool(getattr(PROTOCOLS.get(spec.protocol).obj, "knows_test_subject", False))
    return {
        "schema": MODEL_SCHEMA, "method": spec.method, "variant": spec.variant, "spec_hash": spec.spec_hash,
        "protocol": spec.protocol, "subject": int(spec.subject), "seed": int(spec.seed),
        "code_fingerprint": record.code_fingerprint, "finished_at": record.provenance.get("finished_at"),
        "selected_epoch": record.metrics.get("val", {}).get("selected_epoch"),
        "config": spec.config, "data_info": {**asdict(info), "ch_names": list(info.ch_names)},
        "selection": {"channels": list(info.ch_names), "channels_config": data["channels"],
                      "tmin": float(data["tmin"]), "tmax": float(data["tmax"]), "sfreq": float(info.sfreq),
                      "n_times": int(info.n_times), "window_start": float(ds.times[0]),
                      "train_average": bool(data["train_average"]), "test_repetitions": data["test_repetitions"]},
        # where the protocol let the model know the subject (intra), the index it was told; None under inter
        "subject_index": ds.subjects.index(spec.subject) if knows_subject else None,
        "dataset_subjects": [int(s) for s in ds.subjects],
    }


def write_model(path: Path, method: torch.nn.Module, meta: dict) -> dict:
    """Save ``method``'s state_dict as safetensors (atomically); what the record says about the file."""
    from safetensors.torch import save_model

    with atomic_path(path, suffix=MODEL_SUFFIX) as tmp:
        # save_model drops the duplicate names of shared tensors (e.g. a shared adapter) and load_model restores them
        save_model(method, str(tmp), metadata={META_KEY: json.dumps(meta, default=str)}, force_contiguous=True)
        os.chmod(tmp, 0o666 & ~current_umask())  # safetensors creates the file 0600; records and models are shared
    state = method.state_dict()
    return {"file": path.name, "format": "safetensors", "bytes": path.stat().st_size, "sha256": _sha256(path),
            "parameters": int(sum(p.numel() for p in method.parameters())),
            # shared tensors (e.g. one adapter under two names) are stored once, so counted once
            "values": int(sum({t.data_ptr(): t.numel() for t in state.values()}.values())), "tensors": len(state)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --- finding a run ------------------------------------------------------------------------------------------------
def _describe(rec: RunRecord) -> str:
    return f"{rec.spec_hash} ({rec.spec.label}, {rec.status})"


def _read(path: Path) -> RunRecord:
    # the metric checks (bench.record_check) are about the scores, not the model: the model file is tied to its
    # record by the sha256 the record holds, and a record whose .npz was deleted still has a usable model
    return read_record(path, check=False)


def _records(store: RunStore) -> tuple[list[RunRecord], int]:
    """Every readable record of the store, and how many files could not be read (skipped, not fatal here)."""
    out, bad = [], 0
    for path in sorted(store.runs_dir.glob("*.json")):
        try:
            out.append(_read(path))
        except RecordError:
            bad += 1
    return out, bad


def find_record(results_dir: str | Path, run: str) -> RunRecord:
    """The record ``run`` names: a unique spec-hash prefix (>= 4 hex characters) or ``method/protocol/subject/seed``
    (``method[variant]`` for an ablation variant)."""
    store = RunStore(results_dir)
    if not store.runs_dir.is_dir():
        raise ModelError(f"{Path(results_dir)}: no runs/ folder, so no run records (pass --results DIR)")
    run = run.strip()
    if "/" in run:
        return _by_address(store, run)
    if not re.fullmatch(r"[0-9a-fA-F]{4,}", run):
        raise ModelError(f"run {run!r}: give a record hash prefix of at least 4 hex characters or "
                         f"method/protocol/subject/seed (e.g. nice/intra/1/0)")
    paths = sorted(store.runs_dir.glob(f"{run.lower()}*.json"))
    if not paths:
        n = len(list(store.runs_dir.glob("*.json")))
        raise ModelError(f"no run record in {store.runs_dir} starts with {run!r} ({n} record(s) there)")
    if len(paths) > 1:
        raise ModelError(f"run {run!r} is ambiguous in {store.runs_dir}: {len(paths)} records start with it: "
                         f"{', '.join(_describe(_read(p)) for p in paths)}; give more characters")
    return _read(paths[0])


def _by_address(store: RunStore, address: str) -> RunRecord:
    parts = address.split("/")
    if len(parts) != 4 or not (parts[2].isdigit() and parts[3].isdigit()):
        raise ModelError(f"run {address!r}: expected method/protocol/subject/seed with integer subject and seed, "
                         f"e.g. nice/intra/1/0")
    name, protocol, subject, seed = parts[0], parts[1], int(parts[2]), int(parts[3])
    records, bad = _records(store)
    found = [r for r in records if (r.spec.method if r.spec.variant is None else f"{r.spec.method}[{r.spec.variant}]")
             == name and r.spec.protocol == protocol and int(r.spec.subject) == subject and int(r.spec.seed) == seed]
    if not found:
        unread = f", {bad} unreadable" if bad else ""
        raise ModelError(f"no run {address} in {store.runs_dir} ({len(records)} record(s) there{unread})")
    if len(found) > 1:
        differ = _config_differences([r.spec.config for r in found])
        raise ModelError(f"{len(found)} records in {store.runs_dir} match {address}"
                         f"{' (they differ in ' + ', '.join(differ) + ')' if differ else ''}: "
                         f"{', '.join(_describe(r) for r in found)}; name one by its hash prefix")
    return found[0]


def _config_differences(configs: list[dict], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between ``configs``."""
    keys = sorted({k for c in configs for k in c})
    out = []
    for key in keys:
        values = [c.get(key) for c in configs]
        if all(isinstance(v, dict) for v in values):
            out.extend(_config_differences(values, f"{prefix}{key}."))
        elif any(v != values[0] for v in values):
            out.append(prefix + key)
    return out


# --- loading ------------------------------------------------------------------------------------------------------
@dataclass
class SavedRun:
    """A run's record, its model file and metadata, and the rebuilt method (eval mode, weights loaded)."""

    record: RunRecord
    path: Path
    meta: dict
    method: Method
    device: torch.device

    @property
    def label(self) -> str:
        return f"{self.record.spec_hash} ({self.record.spec.label})"


def load_run(results_dir: str | Path, run: str, device: str | torch.device = "cpu") -> Method:
    """The method of a finished run, rebuilt from its record and loaded with its selected weights, in eval mode.

    ``run`` is a unique record-hash prefix (>= 4 characters) or ``method/protocol/subject/seed`` (``nice/intra/1/0``).
    Warns (:class:`CodeChangedWarning`) when the method's code changed since the run; raises :class:`ModelError`
    when the run has no model or its weights do not fit the method the current code builds."""
    return open_run(results_dir, run, device).method


def open_run(results_dir: str | Path, run: str, device: str | torch.device = "cpu") -> SavedRun:
    """:func:`load_run`, keeping the record and the model's metadata beside the method."""
    record = find_record(results_dir, run)
    path = _model_file(RunStore(results_dir), record)
    meta = read_model_meta(path)
    if meta.get("spec_hash") != record.spec_hash or meta.get("finished_at") != record.provenance.get("finished_at"):
        raise ModelError(f"{path} was written by another computation of this run than its record "
                         f"({meta.get('finished_at')} vs {record.provenance.get('finished_at')}); recompute it")
    method = _rebuild(record, meta)
    _load_weights(method, path, record)
    _warn_if_code_changed(record)
    return SavedRun(record=record, path=path, meta=meta, method=method.to(device).eval(), device=torch.device(device))


def _model_file(store: RunStore, record: RunRecord) -> Path:
    """The model file the record names, checked against the size and sha256 the record holds."""
    who = _describe(record)
    if record.status != COMPLETED:
        raise ModelError(f"run {who} did not complete; it has no model")
    saved = record.extras.get(RECORD_KEY)
    if not isinstance(saved, dict) or "file" not in saved:
        if isinstance(saved, dict) and "error" in saved:
            why = f"saving it failed: {saved['error']}"
        elif record.spec.config.get("train", {}).get("save_model") is False:
            why = "it ran with train.save_model: false"
        else:
            why = "it was recorded before models were saved; recompute it (bench train ... --force)"
        raise ModelError(f"run {who} in {store.runs_dir} has no saved model: {why}")
    path = store.runs_dir / Path(str(saved["file"])).name  # a record is untrusted text: never a path out of runs/
    if not path.is_file():
        raise ModelError(f"{path} is missing, though the record {store.record_path(record.spec_hash)} names it")
    if path.stat().st_size != saved.get("bytes") or _sha256(path) != saved.get("sha256"):
        raise ModelError(f"{path} differs from the file the record {store.record_path(record.spec_hash)} names "
                         f"(size or sha256): it was edited or replaced since the run")
    return path


def read_model_meta(path: Path) -> dict:
    """The "thingsbench" metadata of a model file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
        meta = json.loads(raw) if raw else None
    except Exception as exc:  # noqa: BLE001 - safetensors and json raise several types for a damaged file
        raise ModelError(f"{path}: not a readable safetensors model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("schema") != MODEL_SCHEMA:
        raise ModelError(f"{path}: no {MODEL_SCHEMA} metadata; not a model file written by bench")
    return meta


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch as the run did when it built the method, then restore the caller's RNG state."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _rebuild(record: RunRecord, meta: dict) -> Method:
    """The method as the current code builds it from the saved DataInfo and the run's ``method:`` config."""
    spec, saved = record.spec, meta.get("data_info") or {}
    missing = [f.name for f in fields(DataInfo) if f.name not in saved]
    if missing:
        raise ModelError(f"run {_describe(record)}: its model metadata lacks DataInfo field(s) {', '.join(missing)}")
    info = DataInfo(**{f.name: saved[f.name] for f in fields(DataInfo)} | {"ch_names": tuple(saved["ch_names"])})
    try:
        with _seeded(int(spec.seed)):  # non-persistent state drawn at construction matches the run's
            return METHODS.create(spec.method, info=info, **spec.config["method"])
    except RegistryError as exc:
        raise ModelError(f"run {_describe(record)}: {exc} (a plugin method needs bench --plugin FILE)") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"run {_describe(record)}: the current code cannot build {spec.method} from the run's "
                         f"config: {exc}") from None


def _load_weights(method: Method, path: Path, record: RunRecord) -> None:
    from safetensors.torch import load_model

    try:
        load_model(method, str(path), strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ModelError(f"{path} does not fit {record.spec.method} as the current code builds it from the run's "
                         f"config: {reason[:400]}") from None


def _warn_if_code_changed(record: RunRecord) -> None:
    from bench.code_fingerprint import fingerprint_method

    spec = record.spec
    code = fingerprint_method(spec.method, spec.config["method"], spec.protocol)
    if record.code_fingerprint != code.digest:
        warnings.warn(f"run {_describe(record)}: the method's code changed since the run "
                      f"({code.changes_from(record.provenance.get('code'))}); its weights were loaded anyway",
                      CodeChangedWarning, stacklevel=3)


# --- applying the model ------------------------------------------------------------------------------------------
def _selection(header, sel: dict, who: str) -> tuple[np.ndarray | None, slice]:
    """Channel index and sample slice of the run's selection in a file; a file that cannot give it is refused."""
    missing = [c for c in sel["channels"] if c not in header.ch_names]
    if missing:
        raise ModelError(f"{header.path}: has {len(header.ch_names)} channels and lacks {len(missing)} of the "
                         f"{len(sel['channels'])} that run {who} was trained on ({', '.join(missing[:8])}"
                         f"{' ...' if len(missing) > 8 else ''})")
    sfreq, n_times, start = sel["sfreq"], sel["n_times"], sel["window_start"]
    expected = (f"run {who} expects {sfreq:g} Hz and {n_times} samples from {start:.3f} s "
                f"(data.tmin/tmax [{sel['tmin']:g}, {sel['tmax']:g}) s)")
    if abs(header.sfreq - sfreq) > 1e-6 * sfreq:
        raise ModelError(f"{header.path}: sampled at {header.sfreq:g} Hz; {expected}")
    times = header.times
    inside = np.flatnonzero((times >= sel["tmin"] - _TIME_EPS) & (times < sel["tmax"] - _TIME_EPS))
    if inside.size != n_times or abs(times[inside[0]] - start) > 0.5 / sfreq:
        found = f"{inside.size} samples from {times[inside[0]]:.3f} s" if inside.size else "no sample"
        raise ModelError(f"{header.path}: its time axis ({times[0]:.3f}..{times[-1]:.3f} s) gives {found} in the "
                         f"window; {expected}")
    index = np.array([header.ch_names.index(c) for c in sel["channels"]], dtype=np.int64)
    channels = None if np.array_equal(index, np.arange(header.shape[2])) else index
    return channels, slice(int(inside[0]), int(inside[-1]) + 1)


def read_run_eeg(saved: SavedRun, path: str | Path) -> np.ndarray:
    """float32 (images, C, T): ``path`` (any supported layout) with the run's channels and window, its repetitions
    averaged as the run averaged its test data (all, or the first ``data.test_repetitions``).

    Reads through the dataset's float16 cache as the run's own test data did, so the values are the same."""
    from bench.data.cache import cached_eeg, peek_header

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"EEG file {path} does not exist")
    header = peek_header(path)  # checked before the data are read or cached
    channels, samples = _selection(header, saved.meta["selection"], saved.label)
    n_reps = saved.meta["selection"]["test_repetitions"]
    if n_reps is not None and n_reps > header.shape[1]:
        raise ModelError(f"{path}: {header.shape[1]} repetitions, but run {saved.label} averaged the first {n_reps} "
                         f"(data.test_repetitions)")
    return cached_eeg(path).mean(channels, samples, n_reps)


@torch.no_grad()
def embed_eeg(saved: SavedRun, eeg: np.ndarray, batch_size: int = EMBED_BATCH) -> np.ndarray:
    """``encode_eeg`` over ``eeg`` in batches (as the evaluator batches), with the run's subject index where its
    protocol told the model the subject; float32 (rows, D)."""
    method, device = saved.method, saved.device
    index = saved.meta.get("subject_index")
    out = []
    for start in range(0, len(eeg), int(batch_size)):
        rows = np.arange(start, min(start + int(batch_size), len(eeg)))
        x = torch.as_tensor(eeg[rows], dtype=torch.float32, device=device)
        subject = None if index is None else torch.full((len(rows),), int(index), dtype=torch.int64, device=device)
        out.append(method.encode_eeg(x, subject).float().cpu().numpy())
    dim = int(saved.meta["data_info"]["feature_dim"])
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


@torch.no_grad()
def embed_gallery(saved: SavedRun, features: np.ndarray, batch_size: int = EMBED_BATCH) -> np.ndarray:
    """``encode_image`` over gallery feature rows, in batches; float32 (rows, D)."""
    method, device = saved.method, saved.device
    dim = int(saved.meta["data_info"]["feature_dim"])
    if features.ndim != 2 or features.shape[1] != dim:
        raise ModelError(f"gallery features have shape {features.shape}; run {saved.label} was trained on "
                         f"{dim}-d features")
    out = [method.encode_image(torch.as_tensor(features[s:s + int(batch_size)], dtype=torch.float32, device=device))
           .float().cpu().numpy() for s in range(0, len(features), int(batch_size))]
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def gallery_names(path: str | Path, partition: str, meta: dict, n_rows: int, table: str = "image"
                  ) -> list[str] | None:
    """Item names of a feature file's rows: its image list (``bench features``' images root, or an
    image_metadata.npy / image folders beside the file; concept folders for centroid rows), when it has exactly as
    many entries; else None."""
    from bench.data.layout import DataLayout, find_image_list, scan_image_folders

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    images_root = meta.get("images_root")
    try:
        if images_root and Path(images_root).is_dir():
            images = scan_image_folders(Path(images_root))
        else:
            images = find_image_list(DataLayout(root=folder, eeg_dir=folder, subjects={}))
    except UserError:
        return None  # no image list: rows are named by their index
    if table == "centroid":
        names = images.train_concepts if partition == "train" else images.test_concepts
    else:
        names = images.train_images if partition == "train" else images.test_images
    return list(names) if len(names) == n_rows else None


@dataclass
class Prediction:
    """Ranked gallery rows per EEG row: ``index[i, r]`` is the gallery row at rank r for EEG row i."""

    index: np.ndarray
    score: np.ndarray
    names: list[str]


def rank_gallery(eeg_emb: np.ndarray, gallery_emb: np.ndarray, top: int, names: list[str] | None,
                 similarity: str = "cosine") -> Prediction:
    """The evaluator's similarity (``eval.similarity``: cosine, or dot under a published protocol), gallery rows sorted
    by it (ties by row order), the first ``top`` kept."""
    from bench.evaluate import SIMILARITY

    sim = SIMILARITY[similarity](eeg_emb, gallery_emb)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :max(1, int(top))]
    return Prediction(index=order, score=np.take_along_axis(sim, order, axis=1),
                      names=names or [str(i) for i in range(gallery_emb.shape[0])])


def predict(saved: SavedRun, eeg_path: str | Path, gallery: str | Path, partition: str = "test", top: int = 5,
            batch_size: int = EMBED_BATCH, table: str = "image") -> Prediction:
    """The ``top`` gallery items per row of an EEG file, from a feature file's ``partition`` rows of ``table``
    (``image``, or ``centroid``: NICE-style concept centres), scored with the run's ``eval.similarity``."""
    from bench.data.features import load_partition_any

    if partition not in ("train", "test") or table not in ("image", "centroid"):
        raise ModelError(f"--partition must be train or test and --table image or centroid, not {partition!r}, "
                         f"{table!r}")
    feats = load_partition_any(gallery, partition)  # type: ignore[arg-type]
    rows = feats.image if table == "image" else feats.centroid
    if rows is None:
        raise ModelError(f"{gallery}: the {partition} partition has no {table} rows")
    gallery_emb = embed_gallery(saved, rows, batch_size)  # the gallery first, as the evaluator does
    eeg_emb = embed_eeg(saved, read_run_eeg(saved, eeg_path), batch_size)
    names = gallery_names(gallery, partition, feats.meta, len(rows), table)
    similarity = saved.record.spec.config.get("eval", {}).get("similarity", "cosine")
    return rank_gallery(eeg_emb, gallery_emb, top, names, similarity)


def save_embeddings(path: str | Path, embeddings: np.ndarray) -> Path:
    """Write ``embeddings`` as .npy, atomically (a killed write leaves no file)."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, embeddings)
    return path
