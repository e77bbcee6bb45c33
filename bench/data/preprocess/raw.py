"""Finding and reading the raw THINGS-EEG sessions (``raw_data/sub-XX/ses-YY/raw_eeg_{training,test}.npy``).

Each file is an ``np.save``'d dict (``raw_eeg_data``: 63 EEG + 1 stim rows × samples, ``ch_names``, ``ch_types``,
``sfreq``), read with the restricted unpickler: nothing but numpy arrays can come out of it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.diskarray import DiskArray
from bench.data.errors import DataFormatError, DataRootError
from bench.data.formats import load_pickled_object

PARTITION_FILES = {"train": "raw_eeg_training.npy", "test": "raw_eeg_test.npy"}
STIM = "stim"
_SUBJECT, _SESSION = re.compile(r"^sub-(\d+)$"), re.compile(r"^ses-(\d+)$")


class RawDataError(DataFormatError):
    """A raw session file is missing, malformed, or unusable for epoching (no stim channel, too low a rate, ...)."""


@dataclass
class RawSession:
    path: Path
    data: np.ndarray  # (channels incl. stim, samples)
    ch_names: list[str]
    ch_types: list[str]
    sfreq: float


def raw_dir(root: str | Path) -> Path:
    """The folder holding ``sub-XX/``: ``root/raw_data`` (the OSF download) or ``root`` itself."""
    root = Path(root).expanduser()
    if (root / "raw_data").is_dir():
        return root / "raw_data"
    if root.is_dir() and any(_SUBJECT.match(p.name) for p in root.iterdir()):
        return root
    raise DataRootError(f"{root}: no raw_data/ folder and no sub-XX/ folders; expected "
                        f"raw_data/sub-01/ses-01/raw_eeg_training.npy (the OSF raw EEG download)")


def raw_subjects(root: str | Path) -> list[int]:
    folder = raw_dir(root)
    return sorted(int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := _SUBJECT.match(p.name)))


def session_files(root: str | Path, subject: int, n_sessions: int) -> list[dict[str, Path]]:
    """Per session 1..n_sessions, the raw file of each partition; every one must exist."""
    folder = raw_dir(root) / f"sub-{subject:02d}"
    if not folder.is_dir():
        found = ", ".join(f"{s}" for s in raw_subjects(root)) or "none"
        raise DataRootError(f"{folder} does not exist (subjects found: {found})")
    present = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _SESSION.match(p.name)))
    missing = [s for s in range(1, n_sessions + 1) if s not in present]
    if missing:
        raise RawDataError(f"{folder}: missing session(s) {', '.join(f'ses-{s:02d}' for s in missing)} (found: "
                           f"{', '.join(f'ses-{s:02d}' for s in present) or 'none'}); every subject needs sessions "
                           f"1..{n_sessions} (set --sessions to process fewer)")
    out = []
    for s in range(1, n_sessions + 1):
        files = {part: folder / f"ses-{s:02d}" / name for part, name in PARTITION_FILES.items()}
        absent = [str(p) for p in files.values() if not p.is_file()]
        if absent:
            raise RawDataError(f"missing raw file(s): {', '.join(absent)}")
        out.append(files)
    return out


def read_raw_session(path: str | Path, min_sfreq: float) -> RawSession:
    """Read and check one raw file; the recording is loaded into memory (one session at a time)."""
    path = Path(path)
    _, obj = load_pickled_object(path)
    if not isinstance(obj, dict):
        raise RawDataError(f"{path}: expected a dict (raw_eeg_data, ch_names, ch_types, sfreq), found "
                           f"{type(obj).__name__}")
    missing = [k for k in ("raw_eeg_data", "ch_names", "ch_types", "sfreq") if k not in obj]
    if missing:
        raise RawDataError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(map(str, obj))}); "
                           f"expected the OSF raw format")
    names, types = (_strings(path, key, obj[key]) for key in ("ch_names", "ch_types"))
    if STIM not in names:
        raise RawDataError(f"{path}: no {STIM!r} channel in ch_names; the events (image conditions) are read from it")
    sfreq = _sfreq(path, obj["sfreq"], min_sfreq)
    data = obj["raw_eeg_data"]
    if not isinstance(data, (np.ndarray, DiskArray)) or len(data.shape) != 2 or np.dtype(data.dtype).kind != "f":
        raise RawDataError(f"{path}: raw_eeg_data must be a 2-D float array (channels × samples), found "
                           f"{getattr(data, 'shape', type(data).__name__)} {getattr(data, 'dtype', '')}")
    if not data.shape[0] == len(names) == len(types):
        raise RawDataError(f"{path}: raw_eeg_data has {data.shape[0]} rows, ch_names {len(names)} and ch_types "
                           f"{len(types)} entries; expected one per channel")
    if isinstance(data, DiskArray):
        data.check_fits()
        data = data.read_rows(0, data.shape[0])
    return RawSession(path, data, names, types, sfreq)


def _strings(path: Path, key: str, raw) -> list[str]:
    values = raw.tolist() if isinstance(raw, np.ndarray) else raw
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise RawDataError(f"{path}: {key} must be a list of strings, found {type(raw).__name__}")
    return list(values)


def _sfreq(path: Path, raw, min_sfreq: float) -> float:
    try:
        sfreq = float(raw)
    except (TypeError, ValueError):
        raise RawDataError(f"{path}: sfreq must be a number, found {raw!r}") from None
    if not math.isfinite(sfreq) or sfreq < min_sfreq:
        raise RawDataError(f"{path}: sfreq is {raw!r} Hz; the recording must be sampled at least at {min_sfreq:g} Hz "
                           f"(the published raw files are 1000 Hz)")
    return sfreq
