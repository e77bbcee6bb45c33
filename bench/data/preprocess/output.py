"""Writing a merged partition in the published format of the profile, atomically.

``nice-pickle`` streams through :func:`bench.data.writer.write_nice_pickle` (bounded memory). ``osf-npy`` (the
official ``np.save``'d dict) has no streaming writer; its arrays are small (a full training file is 16540×4×17×100
float32 = 450 MB), so the blocks are joined in memory and saved with ``np.save``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bench.data.writer import write_nice_pickle
from bench.io import atomic_path

FILE_NAMES = {"train": "preprocessed_eeg_training.npy", "test": "preprocessed_eeg_test.npy"}


def write_partition(path: Path, file_format: str, shape: tuple[int, int, int, int], blocks: Iterable[np.ndarray],
                    ch_names: Sequence[str], times: np.ndarray) -> Path:
    if file_format == "nice-pickle":
        return write_nice_pickle(path, shape, np.float32, blocks, ch_names, times)
    if file_format == "osf-npy":
        data = np.concatenate(list(blocks), axis=0).astype(np.float32, copy=False)
        if data.shape != tuple(shape):
            raise ValueError(f"merged {data.shape}, expected {shape}")
        payload = {"preprocessed_eeg_data": data, "ch_names": list(ch_names),
                   "times": np.asarray(times, dtype=np.float64)}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, payload, allow_pickle=True)  # a dict: readers need .item(), as with the OSF files
        return path
    raise ValueError(f"no writer for format {file_format!r}")
