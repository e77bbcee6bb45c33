"""Readers for the three published THINGS-EEG preprocessed formats and for ``image_metadata.npy``.

=============  ====================================================  =====================================
format         file (per subject folder ``sub-XX/``)                 serialisation
=============  ====================================================  =====================================
``osf-npy``    ``preprocessed_eeg_{training,test}.npy`` (official)   ``np.save`` of a dict (needs ``.item()``)
``nice-pickle``  same names, NICE/ATM ``Preprocessed_data_250Hz``    ``pickle.dump`` of the same dict
``ubp-pt``     ``train.pt`` / ``test.pt`` (UBP)                      ``torch.save`` of a dict (numpy arrays)
=============  ====================================================  =====================================

The format is recognised from the file's first bytes, not its name. Nothing is unpickled with the standard
unpickler: formats 1-2 and the numpy arrays inside UBP's zip go through :mod:`bench.data.safe_pickle`, and UBP files
that hold torch tensors go through ``torch.load(weights_only=True)``. The EEG array itself is not read here: readers
return a :class:`~bench.data.diskarray.DiskArray` pointing into the file (or a memory-mapped tensor), which the cache
converts block by block.
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.channels import unknown_channel_names
from bench.data.diskarray import DiskArray
from bench.data.errors import DataFormatError
from bench.data.safe_pickle import TorchPickle, load_restricted

FORMATS: dict[str, str] = {
    "osf-npy": "official OSF preprocessed data (np.save'd dict: preprocessed_eeg_data, ch_names, times)",
    "nice-pickle": "NICE/ATM Preprocessed_data_250Hz (pickle.dump'ed dict: preprocessed_eeg_data, ch_names, times)",
    "ubp-pt": "UBP train.pt/test.pt (torch.save'd dict: eeg, label, img, text, session, ch_names, times)",
}
#: File names per partition, in the order they are looked for inside a subject folder.
PARTITION_FILES: dict[str, tuple[str, ...]] = {
    "train": ("preprocessed_eeg_training.npy", "train.pt"),
    "test": ("preprocessed_eeg_test.npy", "test.pt"),
}
_DATA_KEY = {"osf-npy": "preprocessed_eeg_data", "nice-pickle": "preprocessed_eeg_data", "ubp-pt": "eeg"}
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class EEGFile:
    """One partition of one subject: (images, repetitions, channels, samples) plus its channel names and times."""

    path: Path
    format: str
    data: DiskArray | np.ndarray
    ch_names: list[str]
    times: np.ndarray  # one entry per sample, seconds
    sfreq: float

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]


def sniff_format(path: Path) -> str:
    """Which published format ``path`` is in, from its first bytes."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"EEG file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise DataFormatError(f"{path}: the file is empty (0 bytes); expected one of: {'; '.join(FORMATS.values())}")
    if head.startswith(_NPY_MAGIC):
        return "osf-npy"
    if head.startswith(b"PK\x03\x04"):
        return "ubp-pt"
    if head[:1] == b"\x80":
        return "ubp-pt" if path.suffix == ".pt" else "nice-pickle"  # .pt here: torch's legacy (non-zip) format
    raise DataFormatError(f"{path}: not a recognised EEG file (starts with {head!r}); expected one of: "
                          f"{'; '.join(FORMATS.values())}")


def load_pickled_object(path: Path) -> tuple[str, Any]:
    """(format, object) of an ``np.save``'d object array (``.item()`` applied) or a plain pickle, restricted."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "osf-npy":
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except ValueError as exc:
                raise DataFormatError(f"{path}: unreadable .npy header ({exc})") from exc
            start = fh.tell()
        if not dtype.hasobject:
            raise DataFormatError(f"{path}: holds a plain {dtype} array of shape {shape}; expected a dict saved with "
                                  f"np.save (keys preprocessed_eeg_data, ch_names, times)")
        obj = load_restricted(path, offset=start)
        if not isinstance(obj, np.ndarray) or obj.shape != ():
            raise DataFormatError(f"{path}: expected one pickled object (a dict) after the .npy header")
        return fmt, obj.item()
    if fmt == "nice-pickle":
        return fmt, load_restricted(path)
    raise DataFormatError(f"{path}: is a torch file, expected a pickle or .npy")


def read_eeg_file(path: str | Path) -> EEGFile:
    """Open any of the three formats and check its structure; the EEG array stays on disk."""
    path = Path(path)
    fmt = sniff_format(path)
    obj = _read_ubp(path) if fmt == "ubp-pt" else load_pickled_object(path)[1]
    return _eeg_from_dict(path, fmt, obj)


def _read_ubp(path: Path) -> Any:
    with open(path, "rb") as fh:
        is_zip_start = fh.read(4) == b"PK\x03\x04"
    if is_zip_start and not zipfile.is_zipfile(path):
        raise DataFormatError(f"{path}: truncated or corrupt zip archive (a torch.save file whose directory at the "
                              f"end is missing or damaged)")
    if is_zip_start:
        offset = _zip_member_offset(path, "data.pkl")
        if offset is not None:
            try:
                return load_restricted(path, offset=offset)
            except TorchPickle:
                pass  # tensors inside: torch's own weights-only loader below
    import torch

    try:
        with torch.serialization.safe_globals(_torch_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises several types for refused or broken files
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        marker = next((i for i, ln in enumerate(lines) if "WeightsUnpickler error" in ln), None)
        tail = lines[marker:marker + 2] if marker is not None else lines[:1]
        reason = " ".join(tail).replace("WeightsUnpickler error:", "").strip() or type(exc).__name__
        raise DataFormatError(f"{path}: torch.load(weights_only=True) refused or could not read it: {reason}") from exc
    if isinstance(obj, dict):
        obj = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
    return obj


def _torch_numpy_globals() -> list:
    """The numpy array constructors (and nothing else) admitted into torch's weights-only unpickler."""
    reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
    dtype_classes = {type(np.dtype(code)) for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "?", "U1", "S1")}
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtype_classes]


def _zip_member_offset(path: Path, suffix: str) -> int | None:
    """Byte offset of the stored (uncompressed) member ending in ``suffix``, as torch.save writes data.pkl."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith("/" + suffix) or i.filename == suffix]
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{path}: truncated or corrupt zip archive ({exc})") from exc
    if len(infos) != 1 or infos[0].compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(infos[0].header_offset)
        header = fh.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise DataFormatError(f"{path}: corrupt zip archive (bad local header for {infos[0].filename})")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return infos[0].header_offset + 30 + name_len + extra_len


def _eeg_from_dict(path: Path, fmt: str, obj: Any) -> EEGFile:
    what = FORMATS[fmt]
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a dict ({what}), found {type(obj).__name__}")
    data_key = _DATA_KEY[fmt]
    missing = [k for k in (data_key, "ch_names", "times") if k not in obj]
    if missing:
        raise DataFormatError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(map(str, obj))}); "
                              f"expected {what}")
    data = obj[data_key]
    if not isinstance(data, (DiskArray, np.ndarray)) or np.dtype(data.dtype).kind != "f":
        raise DataFormatError(f"{path}: {data_key} must be a float array, found "
                              f"{getattr(data, 'dtype', type(data).__name__)}")
    if len(data.shape) != 4 or min(data.shape) == 0:
        raise DataFormatError(f"{path}: {data_key} has shape {tuple(data.shape)}; expected 4-D (images, repetitions, "
                              f"channels, samples), e.g. 16540×4×63×250 (train) or 200×80×63×250 (test)")
    if isinstance(data, DiskArray):
        data.check_fits()
    ch_names = _channel_names(path, obj["ch_names"], data.shape[2])
    times, sfreq = _times(path, obj["times"], data.shape[3])
    return EEGFile(path=path, format=fmt, data=data, ch_names=ch_names, times=times, sfreq=sfreq)


def _channel_names(path: Path, raw: Any, n_channels: int) -> list[str]:
    names = raw.tolist() if isinstance(raw, np.ndarray) else raw
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise DataFormatError(f"{path}: ch_names must be a list of strings, found {type(raw).__name__}")
    names = list(names)
    if len(names) != n_channels:
        raise DataFormatError(f"{path}: ch_names lists {len(names)} channels but the data has {n_channels}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataFormatError(f"{path}: ch_names lists {', '.join(dupes)} more than once")
    unknown = unknown_channel_names(names)
    if unknown:
        raise DataFormatError(f"{path}: ch_names holds {', '.join(map(repr, unknown[:5]))}"
                              f"{' ...' if len(unknown) > 5 else ''}, which are not THINGS-EEG channel names "
                              f"(expected names of the 63-channel EASYCAP montage such as Fp1, Oz, PO8)")
    return names


def _times(path: Path, raw: Any, n_samples: int) -> tuple[np.ndarray, float]:
    try:
        times = np.asarray(raw, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{path}: times must be numbers, found {type(raw).__name__}") from exc
    if times.size > n_samples:
        # The 250 Hz files keep the whole −0.2…1.0 s `times` (300 entries) but only the 250 samples from 0 s on.
        start = int(np.argmin(np.abs(times)))
        if start + n_samples <= times.size:
            times = times[start:start + n_samples]
    if times.size != n_samples:
        raise DataFormatError(f"{path}: times has {np.asarray(raw).size} entries for {n_samples} samples; expected "
                              f"one per sample, or a longer epoch whose samples from 0 s on are the data "
                              f"(250 Hz files: 300 times, 250 samples)")
    if not np.all(np.isfinite(times)):
        raise DataFormatError(f"{path}: times holds NaN/Inf")
    if n_samples < 2:
        raise DataFormatError(f"{path}: only {n_samples} sample(s); cannot tell the sampling rate")
    steps = np.diff(times)
    step = float(np.median(steps))
    if step <= 0 or np.max(np.abs(steps - step)) > 1e-3 * step:
        raise DataFormatError(f"{path}: times are not evenly spaced and increasing (steps {steps.min():.6g}.."
                              f"{steps.max():.6g} s)")
    return times, round(1.0 / step, 6)


@dataclass
class ImageList:
    """THINGS images in label order: concept folder names (``00001_aardvark``) and one entry per image.

    The common form of both sources of a concept list: ``image_metadata.npy`` (read here) and the image folders
    (``bench.data.layout.scan_image_folders``).
    """

    train_concepts: list[str]
    train_images: list[str]  # "<concept folder>/<file>"
    test_concepts: list[str]
    test_images: list[str]
    source: Path

    def images_per_concept(self, partition: str) -> int:
        concepts, images = ((self.train_concepts, self.train_images) if partition == "train"
                            else (self.test_concepts, self.test_images))
        counts = {c: 0 for c in concepts}
        for image in images:
            counts[image.split("/", 1)[0]] += 1
        distinct = sorted(set(counts.values()))
        if len(distinct) != 1:
            raise DataFormatError(f"{self.source}: {partition} concepts have differing image counts {distinct}; "
                                  f"label order (row r belongs to concept r // n) needs the same count for all")
        return distinct[0]


def read_image_metadata(path: str | Path) -> ImageList:
    """``image_metadata.npy`` from the THINGS-EEG image set (an np.save'd dict of per-image lists)."""
    path = Path(path)
    _, meta = load_pickled_object(path)
    if not isinstance(meta, dict):
        raise DataFormatError(f"{path}: expected a dict, found {type(meta).__name__}")
    keys = ("train_img_concepts", "train_img_files", "test_img_concepts", "test_img_files")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise DataFormatError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(map(str, meta))})")
    lists = {k: [str(v) for v in (meta[k].tolist() if isinstance(meta[k], np.ndarray) else meta[k])] for k in keys}
    parts = {}
    for part in ("train", "test"):
        concepts, files = lists[f"{part}_img_concepts"], lists[f"{part}_img_files"]
        if len(concepts) != len(files) or not files:
            raise DataFormatError(f"{path}: {part}_img_concepts has {len(concepts)} entries and {part}_img_files "
                                  f"{len(files)}; expected one per image, and at least one")
        order = list(dict.fromkeys(concepts))
        runs = sum(1 for i, c in enumerate(concepts) if i == 0 or c != concepts[i - 1])
        if runs != len(order):
            raise DataFormatError(f"{path}: the images of a {part} concept are not consecutive; label order needs "
                                  f"them grouped by concept")
        parts[part] = (order, [f"{c}/{f}" for c, f in zip(concepts, files)])
    return ImageList(parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], path)
