"""An array stored raw (C order) at an offset inside a file, read a block of rows at a time.

Both the big blob inside a published pickle and our float16 cache are read through this. Plain reads into a reused
buffer are used instead of a memory map on purpose: pages of a memory map count towards the process's resident set
while it is mapped, so streaming a 2 GB map through would show 2 GB of RSS; read blocks do not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.data.errors import DataFormatError

#: Bytes read per block when streaming (a few dozen MB keeps RSS small and the reads large).
BLOCK_BYTES = 48 * 2**20


@dataclass(frozen=True)
class DiskArray:
    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_nbytes

    def check_fits(self) -> None:
        """Raise if the file is too short to hold the array (a truncated download)."""
        size = Path(self.path).stat().st_size
        if self.offset + self.nbytes > size:
            raise DataFormatError(
                f"{self.path}: truncated: the array {self.shape} {self.dtype} needs bytes {self.offset}.."
                f"{self.offset + self.nbytes} but the file has {size} bytes")

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` as an in-memory array (into ``out`` when given)."""
        start, stop = max(0, start), min(stop, self.shape[0])
        shape = (max(0, stop - start),) + self.shape[1:]
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {self.dtype} array of shape {shape}")
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(self.offset + start * self.row_nbytes)
            done = 0
            while done < len(view):
                n = fh.readinto(view[done:])
                if not n:
                    raise DataFormatError(f"{self.path}: truncated: ended while reading rows {start}..{stop}")
                done += n
        return out

    def row_blocks(self, block_bytes: int | None = None) -> Iterator[tuple[int, int]]:
        return row_blocks(self.shape, self.dtype, block_bytes)

    def memmap(self) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape, order="C")


def row_blocks(shape: tuple[int, ...], dtype: np.dtype, block_bytes: int | None = None) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges over the first axis of an array of ``shape``, about ``block_bytes`` (default
    :data:`BLOCK_BYTES`) each."""
    row_nbytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
    step = max(1, (block_bytes or BLOCK_BYTES) // max(1, row_nbytes))
    for start in range(0, shape[0], step):
        yield start, min(start + step, shape[0])
