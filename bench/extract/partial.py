"""``FILE.npz.partial/``: the finished batches of an extraction in progress, so a killed run resumes from them.

One ``.npy`` shard per image batch (``train_image/000003.npy``), one ``{partition}_text.npy`` per partition, and
``state.json``: the identity and batch size the shards belong to. A folder left with other settings is discarded,
never mixed in. Every file is written atomically, so a shard that exists is a whole batch.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bench.extract.errors import FeatureExtractionError
from bench.extract.metadata import describe_difference
from bench.io import atomic_path, atomic_write_text

PARTITIONS = ("train", "test")
Batch = tuple[str, int, int, int]  # (partition, batch index, first row, end row)


def shard_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a name
        np.save(fh, arr)


def load_shard(path: Path, rows: int) -> np.ndarray | None:
    """The array at ``path`` if it is a whole shard of ``rows`` rows, else None (absent, torn or from elsewhere)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return arr if arr.ndim == 2 and arr.shape[0] == rows else None


class PartialRun:
    """The work folder beside ``out``."""

    def __init__(self, out: Path):
        self.root = out.with_name(out.name + ".partial")
        self.state_file = self.root / "state.json"

    def adopt(self, identity: dict, batch_size: int) -> str | None:
        """Make the folder hold this run's work; returns why an earlier run's folder was discarded, if it was."""
        state = {"identity": identity, "batch_size": batch_size}
        why = None
        if self.root.exists():
            try:
                old = json.loads(self.state_file.read_text())
            except (OSError, ValueError):
                old = None
            if old != state:
                if isinstance(old, dict) and isinstance(old.get("identity"), dict):
                    why = (describe_difference(old["identity"], identity)
                           or f"batch size {old.get('batch_size')} → {batch_size}")
                else:
                    why = "its state.json is unreadable"
                shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_file, json.dumps(state, sort_keys=True))
        return why

    def plan(self, paths: dict[str, list[Path]], batch_size: int) -> list[Batch]:
        """Every image batch of both partitions, in order."""
        batches = []
        for part in PARTITIONS:
            (self.root / f"{part}_image").mkdir(exist_ok=True)
            batches += [(part, i, s, e) for i, (s, e) in enumerate(shard_batches(len(paths[part]), batch_size))]
        return batches

    def shard_path(self, part: str, index: int) -> Path:
        return self.root / f"{part}_image" / f"{index:06d}.npy"

    def text_path(self, part: str) -> Path:
        return self.root / f"{part}_text.npy"

    def missing(self, plan: list[Batch]) -> list[Batch]:
        return [b for b in plan if load_shard(self.shard_path(b[0], b[1]), b[3] - b[2]) is None]

    def images(self, plan: list[Batch], part: str) -> np.ndarray:
        """All image rows of ``part``, assembled from its shards."""
        shards = [load_shard(self.shard_path(p, i), e - s) for p, i, s, e in plan if p == part]
        if any(x is None for x in shards):
            raise FeatureExtractionError(f"{self.root}: a shard of {part} images vanished while running; rerun")
        return np.concatenate(shards)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
