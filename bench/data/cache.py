"""The float16 cache of EEG arrays, keyed by the source file's fingerprint.

A published training file holds one subject's 16540×4×63×250 single trials: 8.3 GB as float64 (NICE/ATM), 4.2 GB as
float32. It is converted once, block by block, into ``cache_dir()/eeg/<fingerprint>/data.npy`` (float16, 2.1 GB) with a
``meta.json`` holding the channel names, times and a power-of-two ``scale`` (1 for whitened data; data in volts is
scaled into float16's range). The conversion checks every value for NaN/Inf and refuses the file if it finds any.
A source that is already a native float16 array at a known offset (UBP files, float16 synthetic data) is not copied:
its entry records only the offset and the validation.

The fingerprint is (size, mtime, SHA-256 of the first MiB): cheap to compute on an 8 GB file, and it changes whenever
the file is replaced. Entries are built in a temporary directory and renamed into place, so a killed conversion
leaves nothing behind, and a lock keeps two workers from converting the same file at once.

Loads read the cache in blocks of a few dozen MB with plain reads and average the repetitions block by block, so the
single-trial array is never in memory; ``trials()`` returns a read-only memory map when no selection is needed.
Each mean is also stored in the entry (``means/<key>.npy``, written once, temp file then rename): a later process
reads the 521 MB float16 average of a published subject instead of converting and summing 2.1 GB. The key names the
selection and the source of this module, so a mean is never served to code that would average differently.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import seal
from bench.data.atomic import atomic_directory, file_lock
from bench.data.diskarray import DiskArray, row_blocks
from bench.data.errors import DataFormatError, NonFiniteDataError
from bench.data.formats import EEGFile, read_eeg_file
from bench.io import atomic_path, atomic_write_text
from bench.paths import cache_dir

CACHE_VERSION = 1
PREFIX_BYTES = 1 << 20
FLOAT16_MAX = 65504.0

#: bytes of single trials read per block while averaging: two threads' buffers stay ~24 MB (RSS target ≤ 0.6 GB for
#: a full subject, whose float16 average alone is 521 MB)
AVERAGE_BLOCK_BYTES = 8 * 2**20

_fingerprints: dict[tuple[str, int, int], str] = {}


class MeanMemo:
    """Averaged arrays of this process, keyed by the source file's fingerprint and the selection, least recently used
    dropped beyond ``max_bytes``. A replaced file has another fingerprint, so it is never served stale."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.arrays = max_bytes, OrderedDict()

    def get(self, key: tuple, compute) -> np.ndarray:
        if key in self.arrays:
            self.arrays.move_to_end(key)
            return self.arrays[key]
        array = compute()
        array.setflags(write=False)
        if array.nbytes <= self.max_bytes:
            self.arrays[key] = array
            while sum(a.nbytes for a in self.arrays.values()) > self.max_bytes:
                self.arrays.popitem(last=False)
        return array

    def clear(self) -> None:
        self.arrays.clear()


#: 2 GiB: both partitions of one published subject (1 GB averaged training rows), or every synthetic subject
MEANS = MeanMemo(2 * 1024 ** 3)


def averaging_threads() -> int:
    """Threads for averaging: the process's share of the cores (``OMP_NUM_THREADS``, which Ray sets to a trial's
    CPUs), else all of them; at most 4, beyond which the reads, not the conversion, set the pace."""
    share = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(4, int(share) if share.isdigit() else (os.cpu_count() or 1)))


def file_fingerprint(path: str | Path) -> str:
    """Hex digest of (size, mtime, first MiB) of ``path``."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _fingerprints:
        digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(PREFIX_BYTES))
        _fingerprints[key] = digest.hexdigest()[:32]
    return _fingerprints[key]


def _mean_name(key: tuple) -> str:
    """File name of a stored mean: a digest of its key (source fingerprint, selection, repetitions, dtype) and of
    this module's source, which holds the averaging code."""
    digest = hashlib.sha256(repr(key).encode())
    digest.update(_module_source())
    return digest.hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def _module_source() -> bytes:
    return Path(__file__).read_bytes()


def eeg_cache_root() -> Path:
    return cache_dir() / "eeg"


@dataclass(frozen=True)
class EEGHeader:
    """What a file holds, without its data: enough to plan a selection."""

    path: Path
    format: str
    shape: tuple[int, int, int, int]
    ch_names: list[str]
    times: np.ndarray
    sfreq: float

    @classmethod
    def of(cls, eeg: EEGFile) -> "EEGHeader":
        return cls(eeg.path, eeg.format, eeg.shape, eeg.ch_names, eeg.times, eeg.sfreq)


@dataclass
class CachedEEG:
    """A validated float16 copy (or view) of one EEG file: values are ``array * (1 / scale)``."""

    header: EEGHeader
    array: DiskArray
    scale: float
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.header.shape

    def mean(self, channels: np.ndarray | None = None, samples: slice = slice(None),
             n_reps: int | None = None, dtype: type = np.float32) -> np.ndarray:
        """(images, channels, samples): the mean of the first ``n_reps`` repetitions (all by default), summed in
        float32 block by block. ``dtype=np.float16`` stores each block's float32 mean rounded to float16 (the same
        values as rounding a float32 result afterwards) at half the memory, and no float32 copy of the whole;
        data far from unit scale (``scale != 1``) come back as float32 either way.

        Read-only, and kept in this process (:class:`MeanMemo`): a warm Ray worker or a serial sweep opens each
        subject once; a run that tried to change the array in place would raise instead of changing the next run's.
        Stored in the cache entry too (:meth:`_stored_mean`), for the next process."""
        reps = self.shape[1]
        use = reps if n_reps is None else int(n_reps)
        if not 1 <= use <= reps:
            raise ValueError(f"n_reps must be between 1 and {reps}, got {n_reps}")
        key = (self.fingerprint, None if channels is None else tuple(int(c) for c in channels),
               samples.indices(self.shape[3]), use, np.dtype(dtype).name)
        return MEANS.get(key, lambda: self._stored_mean(key, channels, samples, use, dtype))

    def _stored_mean(self, key: tuple, channels: np.ndarray | None, samples: slice, use: int,
                     dtype: type) -> np.ndarray:
        """The mean stored under ``key`` in this entry's ``means/``, else computed by :meth:`_average` and stored
        there (temp file, then rename). A file that does not hold the array it should (truncated, another shape or
        dtype) is recomputed over; a cache the process may not write to costs a warning, not the load."""
        path = eeg_cache_root() / self.fingerprint / "means" / f"{_mean_name(key)}.npy"
        shape, out_dtype = self._mean_layout(channels, samples, dtype)
        try:
            stored = np.load(path, allow_pickle=False)
            if stored.shape == shape and stored.dtype == out_dtype:
                return stored
        except (OSError, ValueError, EOFError):  # missing, truncated or not an array: computed and stored anew
            pass
        array = self._average(channels, samples, use, dtype)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save would append .npy to a name
                np.save(fh, array, allow_pickle=False)
        except OSError as exc:
            warnings.warn(f"could not store the averaged EEG in the cache ({exc}); the next run averages it again",
                          stacklevel=2)
        return array

    def _mean_layout(self, channels: np.ndarray | None, samples: slice, dtype: type) -> tuple[tuple, np.dtype]:
        """Shape and dtype of a mean: float16 only when asked and the data are near unit scale."""
        n_ch = self.shape[2] if channels is None else len(channels)
        n_t = len(range(*samples.indices(self.shape[3])))
        half = np.dtype(dtype) == np.float16 and self.scale == 1.0
        return (self.shape[0], n_ch, n_t), np.dtype(np.float16 if half else np.float32)

    def _average(self, channels: np.ndarray | None, samples: slice, use: int, dtype: type) -> np.ndarray:
        """Blocks of rows averaged on :func:`averaging_threads` threads, each with its own small buffers: numpy's
        float16 → float32 conversion costs ~2 ns a value and releases the GIL, so the threads divide the time."""
        shape, out_dtype = self._mean_layout(channels, samples, dtype)
        n_ch, n_t = shape[1:]
        half = out_dtype == np.float16
        out = np.empty(shape, dtype=out_dtype)
        factor = np.float32(1.0 / (use * self.scale))
        blocks = list(self.array.row_blocks(AVERAGE_BLOCK_BYTES))
        rows = blocks[0][1] - blocks[0][0] if blocks else 0
        local = threading.local()

        def average_block(block: tuple[int, int]) -> None:
            start, stop = block
            if not hasattr(local, "buffer"):
                local.buffer = np.empty((rows,) + self.shape[1:], dtype=np.float16)
                local.total = np.empty((rows, n_ch, n_t), dtype=np.float32) if half else None
            trials = self.array.read_rows(start, stop, out=local.buffer[: stop - start])[:, :use]
            if channels is not None:
                trials = trials[:, :, channels]
            target = local.total[: stop - start] if half else out[start:stop]
            np.add.reduce(trials[..., samples], axis=1, dtype=np.float32, out=target)
            target *= factor
            if half:
                out[start:stop] = target

        with ThreadPoolExecutor(averaging_threads()) as pool:
            list(pool.map(average_block, blocks))  # list(): re-raises a block's error here
        return out

    def trials(self, channels: np.ndarray | None = None, samples: slice = slice(None)) -> np.ndarray:
        """float16 (images, repetitions, channels, samples); a read-only memory map when nothing needs selecting.

        Data far from unit scale (e.g. in volts, ``scale != 1``) come back as float32: in float16 they would lose
        their precision.
        """
        full_samples = samples.indices(self.shape[3]) == (0, self.shape[3], 1)
        if channels is None and full_samples and self.scale == 1.0:
            return self.array.memmap()
        n_ch = self.shape[2] if channels is None else len(channels)
        n_t = len(range(*samples.indices(self.shape[3])))
        out = np.empty(self.shape[:2] + (n_ch, n_t), dtype=np.float16 if self.scale == 1.0 else np.float32)
        for start, stop in self.array.row_blocks():
            block = self.array.read_rows(start, stop)
            if channels is not None:
                block = block[:, :, channels]
            block = block[..., samples]
            out[start:stop] = block if self.scale == 1.0 else block * np.float32(1.0 / self.scale)
        return out


def peek_header(path: str | Path) -> EEGHeader:
    """The header of ``path`` from its cache entry if there is one, else from the file (its data is not read)."""
    path = Path(path)
    seal.guard_path(path, "peek_header")
    meta = _read_meta(eeg_cache_root() / file_fingerprint(path))
    if meta is not None:
        return _header_from_meta(path, meta)
    return EEGHeader.of(read_eeg_file(path))


def cached_eeg(path: str | Path) -> CachedEEG:
    """The cache entry of ``path``, converting and validating the file first if needed."""
    path = Path(path)
    seal.guard_path(path, "cached_eeg")
    fingerprint = file_fingerprint(path)
    entry = eeg_cache_root() / fingerprint
    meta = _read_meta(entry)
    if meta is None:
        with file_lock(cache_dir() / "locks" / f"eeg-{fingerprint}.lock"):
            meta = _read_meta(entry)
            if meta is None:
                _build_entry(path, entry)
                meta = _read_meta(entry)
                assert meta is not None
    header = _header_from_meta(path, meta)
    if meta["external_offset"] is not None:
        array = DiskArray(path, meta["external_offset"], np.float16, header.shape)
    else:
        array = DiskArray(entry / "data.npy", meta["data_offset"], np.float16, header.shape)
    return CachedEEG(header=header, array=array, scale=float(meta["scale"]), fingerprint=fingerprint)


def _read_meta(entry: Path) -> dict | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return None  # unreadable entry: rebuilt (atomically) over it
    return meta if meta.get("version") == CACHE_VERSION else None


def _header_from_meta(path: Path, meta: dict) -> EEGHeader:
    return EEGHeader(path, meta["format"], tuple(meta["shape"]), list(meta["ch_names"]),
                     np.asarray(meta["times"], dtype=np.float64), float(meta["sfreq"]))


def _build_entry(path: Path, entry: Path) -> None:
    eeg = read_eeg_file(path)
    with atomic_directory(entry) as tmp:
        scale = _choose_scale(eeg, _first_block(eeg))
        zero_copy = (isinstance(eeg.data, DiskArray) and eeg.data.dtype == np.dtype("<f2") and scale == 1.0)
        if zero_copy:
            _validate_blocks(eeg, scale, None)
            data_offset, external_offset = None, eeg.data.offset
        else:
            data_offset, scale = _convert(eeg, scale, tmp / "data.npy")
            external_offset = None
        meta = {
            "version": CACHE_VERSION, "source": str(path), "format": eeg.format, "shape": list(eeg.shape),
            "source_dtype": str(eeg.data.dtype), "ch_names": eeg.ch_names, "times": eeg.times.tolist(),
            "sfreq": eeg.sfreq, "scale": scale, "data_offset": data_offset, "external_offset": external_offset,
        }
        atomic_write_text(tmp / "meta.json", json.dumps(meta))


def _blocks(eeg: EEGFile):
    data = eeg.data
    for start, stop in row_blocks(data.shape, data.dtype):
        block = data.read_rows(start, stop) if isinstance(data, DiskArray) else np.asarray(data[start:stop])
        yield start, block


def _first_block(eeg: EEGFile) -> np.ndarray:
    return next(_blocks(eeg))[1]


def _choose_scale(eeg: EEGFile, sample: np.ndarray) -> float:
    """1 for data already near unit scale (whitened EEG); else the power of two that brings the RMS near 1."""
    flat = sample.reshape(-1)
    values = flat[:: max(1, flat.size // 2**20)].astype(np.float64)  # ~1M values are plenty for an RMS
    values = values[np.isfinite(values)]
    rms = float(np.sqrt(np.mean(values**2))) if values.size else 0.0
    if rms == 0.0 or 2.0**-6 <= rms <= 2.0**8:
        return 1.0
    return float(2.0 ** round(-math.log2(rms)))


def _validate_blocks(eeg: EEGFile, scale: float, write) -> float:
    """Stream the source once: count NaN/Inf, write scaled float16 blocks if asked; return the largest |value|."""
    bad, first_bad, peak = 0, None, 0.0
    for start, block in _blocks(eeg):
        finite, block_peak = _finite_and_peak(block)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            bad += n_bad
            if first_bad is None:
                first_bad = start + int(np.argwhere(~finite)[0][0])
            block = np.where(finite, block, 0)
        peak = max(peak, block_peak)
        if write is not None and not bad:
            scaled = block if scale == 1.0 else block * scale
            write(scaled.astype(np.float16))
    if bad:
        raise NonFiniteDataError(f"{eeg.path}: {bad} NaN/Inf value(s) in the EEG data (first in image row "
                                 f"{first_bad}); the file is corrupt or was preprocessed wrongly", bad)
    return peak


def _finite_and_peak(block: np.ndarray) -> tuple[np.ndarray, float]:
    """Finite mask and largest finite |value| of a block."""
    if block.dtype == np.float16:
        # float16 arithmetic is emulated and slow; on the bit pattern, |x| is the low 15 bits and ±Inf/NaN are the
        # patterns with all exponent bits set, and the order of finite magnitudes is that of their bits.
        magnitude = block.view(np.uint16) & np.uint16(0x7FFF)
        finite = magnitude < 0x7C00
        finite_magnitudes = np.where(finite, magnitude, 0)
        top = int(finite_magnitudes.max()) if block.size else 0
        return finite, float(np.array(top, dtype=np.uint16).view(np.float16))
    finite = np.isfinite(block)
    values = np.abs(block, where=finite, out=np.zeros_like(block))
    return finite, float(values.max()) if block.size else 0.0


def _convert(eeg: EEGFile, scale: float, target: Path) -> tuple[int, float]:
    """Write the float16 cache file; retried once with a smaller scale if a value overflowed float16."""
    header = {"descr": "<f2", "fortran_order": False, "shape": tuple(eeg.shape)}
    for _ in range(2):
        with open(target, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            data_offset = fh.tell()
            peak = _validate_blocks(eeg, scale, lambda block: block.tofile(fh))
        if peak * scale < FLOAT16_MAX:
            return data_offset, scale
        scale = float(2.0 ** math.floor(math.log2(FLOAT16_MAX / 2 / peak)))
    raise DataFormatError(f"{eeg.path}: values up to {peak:g} cannot be stored in float16")
