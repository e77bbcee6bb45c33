"""Write a file in the NICE/ATM 250 Hz format, streaming the EEG array block by block.

The file is exactly what ``pickle.dump({'preprocessed_eeg_data': array, 'ch_names': [...], 'times': array}, f)``
produces at protocol 4 (the default of Python 3.8+), so ``pickle.load`` and ``np.load(allow_pickle=True)`` read it
like the published files. The difference is that the array's bytes come from an iterator and are never all in
memory, so a full-size subject (16540×4×63×250) can be written with bounded memory.
"""
from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bench.io import atomic_path


class _StreamedArray:
    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[np.ndarray]):
        self.shape, self.dtype, self.blocks = tuple(shape), np.dtype(dtype), blocks


class _StreamedBytes:
    def __init__(self, array: _StreamedArray):
        self.array = array


class _StreamingPickler(pickle._Pickler):  # type: ignore[name-defined]
    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_streamed_array(self, obj: _StreamedArray) -> None:
        # What ndarray.__reduce__ gives at protocol 4: _reconstruct(ndarray, (0,), b'b') then BUILD with
        # (version 1, shape, dtype, fortran=False, raw bytes).
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]

        self.save_reduce(_reconstruct, (np.ndarray, (0,), b"b"),
                         state=(1, obj.shape, obj.dtype, False, _StreamedBytes(obj)), obj=obj)

    def save_streamed_bytes(self, obj: _StreamedBytes) -> None:
        array = obj.array
        total = math.prod(array.shape) * array.dtype.itemsize
        # Large byte strings live outside protocol-4 frames: close the current frame, then write header and payload.
        self.framer.commit_frame(force=True)
        write = self.framer.file_write
        write(pickle.BINBYTES8 + struct.pack("<Q", total))
        written = 0
        for block in array.blocks:
            block = np.ascontiguousarray(block, dtype=array.dtype)
            write(memoryview(block.reshape(-1).view(np.uint8)))
            written += block.nbytes
        if written != total:
            raise ValueError(f"streamed {written} bytes for an array {array.shape} {array.dtype} of {total} bytes")

    dispatch[_StreamedArray] = save_streamed_array
    dispatch[_StreamedBytes] = save_streamed_bytes


def write_nice_pickle(path: str | Path, shape: tuple[int, int, int, int], dtype: str | np.dtype,
                      blocks: Iterable[np.ndarray], ch_names: Sequence[str], times: np.ndarray) -> Path:
    """Write ``path`` atomically; ``blocks`` yield consecutive row blocks of the (images, reps, C, T) array."""
    path = Path(path)
    payload = {"preprocessed_eeg_data": _StreamedArray(shape, np.dtype(dtype), blocks),
               "ch_names": list(ch_names), "times": np.asarray(times, dtype=np.float64)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            _StreamingPickler(fh, protocol=4).dump(payload)
    return path
