"""Feature files: the image and text targets methods align EEG to.

ThingsBench's own format is one ``.npz`` (no pickle) per feature set, holding both partitions::

    train_image   (n_train_images, D)   rows in the loaders' label order (sorted concept folders, sorted files)
    train_text    (n_train_concepts, D) one prompt per training concept            [optional]
    test_image    (n_test_images, D)
    test_text     (n_test_concepts, D)                                              [optional]
    test_centroid (n_test_concepts, D)  NICE-style concept centres (labelled gallery) [optional]
    meta          0-d string: JSON metadata (model, weights, layer, transform, image list hash, prompt template, ...)

Each partition is read separately (:func:`load_partition`), so code that builds the training split never reads a
test array: the leak barrier starts here.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from bench.errors import UserError
from bench.io import atomic_path

Partition = Literal["train", "test"]
FORMAT_VERSION = 1


class FeatureFileError(UserError, ValueError):
    """A feature file is missing, malformed or inconsistent; the message names the file."""


@dataclass
class PartitionFeatures:
    """The targets of one partition. ``image`` rows follow the EEG rows; ``text`` rows follow the concepts."""

    image: np.ndarray
    text: np.ndarray | None = None
    centroid: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])


@dataclass
class FeatureSet:
    train: PartitionFeatures
    test: PartitionFeatures
    meta: dict = field(default_factory=dict)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _check_array(path: Path, key: str, arr: np.ndarray, dim: int | None) -> None:
    if arr.ndim != 2:
        raise FeatureFileError(f"{path}: {key} must be 2-D (rows, dim), found shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise FeatureFileError(f"{path}: {key} has dimension {arr.shape[1]}, expected {dim} like the image features")
    if not np.all(np.isfinite(arr)):
        raise FeatureFileError(f"{path}: {key} contains {int((~np.isfinite(arr)).sum())} NaN/Inf values")


def save_feature_set(path: str | Path, fs: FeatureSet, dtype: str = "float32") -> Path:
    """Write ``fs`` atomically (a killed write leaves no file); rows are stored as given, in ``dtype``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise FeatureFileError(f"{path}: feature files are .npz")
    arrays = {}
    for part_name, part in (("train", fs.train), ("test", fs.test)):
        for key in ("image", "text", "centroid"):
            value = getattr(part, key)
            if value is not None:
                _check_array(path, f"{part_name}_{key}", np.asarray(value), part.image.shape[1] if key != "image" else None)
                arrays[f"{part_name}_{key}"] = np.asarray(value, dtype=dtype)
    if fs.train.image.shape[1] != fs.test.image.shape[1]:
        raise FeatureFileError(f"{path}: train and test image features differ in dimension")
    meta = {"format": "thingsbench-features", "version": FORMAT_VERSION, **fs.meta}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    with _open_npz(path) as npz:
        if "meta" not in npz.files:
            raise FeatureFileError(f"{path}: no 'meta' entry; not a ThingsBench feature file")
        return json.loads(str(npz["meta"]))


def _open_npz(path: Path):
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise FeatureFileError(f"{path}: not a readable .npz feature file ({exc})") from exc


def load_partition(path: str | Path, partition: Partition) -> PartitionFeatures:
    """Read one partition's features; the other partition's arrays are never read."""
    path = Path(path)
    if partition not in ("train", "test"):
        raise ValueError(f"partition must be 'train' or 'test', not {partition!r}")
    with _open_npz(path) as npz:
        if f"{partition}_image" not in npz.files:
            raise FeatureFileError(f"{path}: missing '{partition}_image' (has: {', '.join(npz.files)})")
        try:
            meta = json.loads(str(npz["meta"])) if "meta" in npz.files else {}
            image = npz[f"{partition}_image"].astype(np.float32)
            _check_array(path, f"{partition}_image", image, None)
            out = PartitionFeatures(image=image, meta=meta)
            for key in ("text", "centroid"):
                name = f"{partition}_{key}"
                if name in npz.files:
                    arr = npz[name].astype(np.float32)
                    _check_array(path, name, arr, image.shape[1])
                    setattr(out, key, arr)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            if isinstance(exc, FeatureFileError):
                raise
            raise FeatureFileError(f"{path}: truncated or corrupt entry ({exc})") from exc
    return out


def load_feature_set(path: str | Path) -> FeatureSet:
    """Both partitions (for tools such as `bench data check`; training code uses :func:`load_partition`)."""
    train, test = load_partition(path, "train"), load_partition(path, "test")
    return FeatureSet(train=train, test=test, meta=train.meta)
