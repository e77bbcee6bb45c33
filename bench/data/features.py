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
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from bench import seal
from bench.data.errors import FeatureFileError  # light module: no numpy needed to recognise it
from bench.io import atomic_path

Partition = Literal["train", "test"]
FORMAT_VERSION = 1


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
    if partition == "test":
        seal.guard_test_read(f"test features {path}")
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


# --- geometry ---------------------------------------------------------------------------------------------------
def _mean_pairwise_cosine(unit: np.ndarray) -> float:
    # Σ_ij u_i·u_j = |Σ_i u_i|²: no n×n Gram matrix (16540² doubles for a full training partition)
    n = len(unit)
    return float((np.sum(unit.sum(0) ** 2) - n) / max(n * (n - 1), 1))


def feature_geometry(features: PartitionFeatures, image_concept: np.ndarray | None = None,
                     ks: tuple[int, ...] = (1, 5, 10, 20)) -> dict:
    """Summary statistics of one partition's targets, to compare a feature set with real CLIP's.

    Rows are L2-normalised first. ``image_concept`` maps image rows to text/centroid rows (default: row i is concept
    i, as in a test partition). Keys: ``mean_pairwise_cosine`` and ``common_direction_norm`` (the norm of the mean
    unit image vector, i.e. how much every image shares one direction) and ``common_direction_sd`` (spread of the
    images' projections on that direction: what makes some gallery items close to *every* query); ``top_k_variance``
    (share of the centred unit images' variance in the first k principal components) and ``participation_ratio``;
    with centroids, their (unnormalised) norms and the cosines image–own centre (``matched``), image–other centres
    (``unmatched``) and the image→centre top-1; with text, the same for image–text plus text–text mean cosine.
    """
    image = l2_normalize(features.image).astype(np.float64)
    n = len(image)
    concept = np.arange(n) if image_concept is None else np.asarray(image_concept)
    mean = image.mean(0)
    common = mean / max(np.linalg.norm(mean), 1e-12)
    spectrum = np.linalg.svd(image - mean, compute_uv=False) ** 2
    out = {"n_images": n, "dim": int(image.shape[1]),
           "mean_pairwise_cosine": _mean_pairwise_cosine(image),
           "common_direction_norm": float(np.linalg.norm(mean)),
           "common_direction_sd": float(np.std(image @ common)),
           "top_k_variance": {k: float(spectrum[:k].sum() / spectrum.sum()) for k in ks},
           "participation_ratio": float(spectrum.sum() ** 2 / (spectrum ** 2).sum())}
    if features.centroid is not None:
        centroid = np.asarray(features.centroid, dtype=np.float64)
        norms = np.linalg.norm(centroid, axis=1)
        out.update(centre_norm_min=float(norms.min()), centre_norm_mean=float(norms.mean()),
                   centre_norm_max=float(norms.max()))
        out.update(_paired_cosines("image_centre", image, l2_normalize(centroid).astype(np.float64), concept))
    if features.text is not None:
        text = l2_normalize(features.text).astype(np.float64)
        out.update(_paired_cosines("image_text", image, text, concept))
        out["text_mean_pairwise_cosine"] = _mean_pairwise_cosine(text)
    return out


def _paired_cosines(name: str, image: np.ndarray, other: np.ndarray, concept: np.ndarray) -> dict:
    cos = image @ other.T
    own = np.zeros_like(cos, dtype=bool)
    own[np.arange(len(image)), concept] = True
    return {f"{name}_matched": float(cos[own].mean()), f"{name}_unmatched": float(cos[~own].mean()),
            f"{name}_top1": float(np.mean(cos.argmax(1) == concept))}


# --- the feature files users already have: ATM .pt and NICE .npy -------------------------------------------------
#
#   ATM   <model>_features_train.pt / _test.pt   torch.save'd dict: img_features (16540×1024 / 200×1024) and
#                                                text_features (1654×1024 / 200×1024); some copies hold a bare tensor
#   NICE  clip_feature_maps_training.npy / _test.npy  (16540×1×768 / 200×1×768), center_clip.npy (200×768) concept
#         centres (NICE's labelled gallery, read into the test partition's `centroid`)
#   ours  features.npz (see the top of this module)

ATM_FEATURE_FILE = re.compile(r"^(?P<model>.+)_features_(?P<partition>train|test)\.pt$")
NICE_FEATURE_FILES = {"train": "clip_feature_maps_training.npy", "test": "clip_feature_maps_test.npy"}
NICE_CENTROID_FILE = "center_clip.npy"
DEFAULT_FEATURE_FILE = "features.npz"
FEATURE_SUBFOLDERS = ("", "dnn_feature", "features")


def feature_files(path_or_dir: str | Path, partition: Partition) -> tuple[str, list[Path]]:
    """(kind, files) that reading ``partition`` from ``path_or_dir`` opens; kind is thingsbench, atm or nice.

    A directory is searched for our ``features.npz``, then an ATM pair, then NICE's files. Naming either file of an
    ATM or NICE pair selects the pair.
    """
    if partition not in ("train", "test"):
        raise ValueError(f"partition must be 'train' or 'test', not {partition!r}")
    path = Path(path_or_dir)
    if path.is_dir():
        found = _feature_file_in(path)
        if found is None:
            raise FeatureFileError(f"{path}: no feature file; looked for {DEFAULT_FEATURE_FILE}, "
                                   f"<model>_features_train.pt (ATM) and {NICE_FEATURE_FILES['train']} (NICE) in it "
                                   f"and in {', '.join(f for f in FEATURE_SUBFOLDERS if f)}/")
        path = found
    if path.suffix == ".npz":
        return "thingsbench", [path]
    atm = ATM_FEATURE_FILE.match(path.name)
    if atm:
        return "atm", [path.with_name(f"{atm['model']}_features_{partition}.pt")]
    if path.name in NICE_FEATURE_FILES.values():
        files = [path.with_name(NICE_FEATURE_FILES[partition])]
        centroid = path.with_name(NICE_CENTROID_FILE)
        if partition == "test" and centroid.is_file():
            files.append(centroid)
        return "nice", files
    if path.name == NICE_CENTROID_FILE:
        raise FeatureFileError(f"{path}: concept centres alone are not a feature set; name "
                               f"{NICE_FEATURE_FILES['train']} (the centres beside it are read with the test part)")
    raise FeatureFileError(f"{path}: unrecognised feature file name; expected a ThingsBench .npz, "
                           f"<model>_features_train.pt / _test.pt (ATM) or {NICE_FEATURE_FILES['train']} / "
                           f"{NICE_FEATURE_FILES['test']} (NICE)")


def _feature_file_in(folder: Path) -> Path | None:
    for sub in FEATURE_SUBFOLDERS:
        base = folder / sub
        if not base.is_dir():
            continue
        if (base / DEFAULT_FEATURE_FILE).is_file():
            return base / DEFAULT_FEATURE_FILE
        atm = sorted(base.glob("*_features_train.pt"))
        if len(atm) > 1:
            raise FeatureFileError(f"{base}: several ATM feature sets ({', '.join(p.name for p in atm)}); "
                                   f"name the one to use (data.features)")
        if atm:
            return atm[0]
        if (base / NICE_FEATURE_FILES["train"]).is_file():
            return base / NICE_FEATURE_FILES["train"]
    return None


def find_feature_file(folders: list[Path]) -> Path | None:
    """The first feature file found in ``folders`` (see :func:`feature_files` for the search order)."""
    for folder in folders:
        found = _feature_file_in(Path(folder)) if Path(folder).is_dir() else None
        if found is not None:
            return found
    return None


def load_partition_any(path_or_dir: str | Path, partition: Partition) -> PartitionFeatures:
    """One partition's features from our .npz, an ATM .pt pair or NICE .npy files (dispatched by file name)."""
    if partition == "test":
        seal.guard_test_read(f"test features {path_or_dir}")
    kind, files = feature_files(path_or_dir, partition)
    if kind == "thingsbench":
        return load_partition(files[0], partition)
    if kind == "atm":
        return _read_atm(files[0])
    return _read_nice(files[0], files[1] if len(files) > 1 else None)


# --- what a feature file holds, from its headers alone ------------------------------------------------------------
TABLES = ("image", "text", "centroid")


def partition_tables(path_or_dir: str | Path, partition: Partition) -> dict[str, tuple[int, int]]:
    """{table: (rows, dim)} for the tables (image, text, centroid) ``partition`` holds, read from file headers only.

    No feature value is read (npz and .npy headers; an ATM .pt is memory-mapped and only its shapes are looked at),
    so a run may ask about the sealed test partition before training. NICE's (N, 1, D) arrays count as (N, D).
    """
    kind, files = feature_files(path_or_dir, partition)
    if kind == "thingsbench":
        shapes = _npz_shapes(files[0])
        found = {t: shapes[f"{partition}_{t}"] for t in TABLES if f"{partition}_{t}" in shapes}
        if "image" not in found:
            raise FeatureFileError(f"{files[0]}: missing '{partition}_image' (has: {', '.join(sorted(shapes))})")
    elif kind == "atm":
        found = _atm_shapes(files[0])
    else:
        found = {"image": _npy_shape(files[0])}
        if len(files) > 1:
            found["centroid"] = _npy_shape(files[1])
    return {t: _as_row_shape(files[0], t, shape) for t, shape in found.items()}


def _as_row_shape(path: Path, table: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 3 and shape[1] == 1:
        shape = (shape[0], shape[2])
    if len(shape) != 2:
        raise FeatureFileError(f"{path}: {table} features must be 2-D (rows, dim), found shape {shape}")
    return int(shape[0]), int(shape[1])


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Entry name → array shape of an .npz, from each member's .npy header."""
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist")
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".npy"):
                    with zf.open(name) as fh:
                        shapes[name[:-4]] = _read_npy_header(fh)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise FeatureFileError(f"{path}: not a readable .npz feature file ({exc})") from exc
    return shapes


def _read_npy_header(fh) -> tuple[int, ...]:
    version = np.lib.format.read_magic(fh)
    # format 3.0 differs from 2.0 only in allowing utf-8 field names, which feature arrays do not have
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = read(fh)
    return tuple(shape)


def _npy_shape(path: Path) -> tuple[int, ...]:
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            return _read_npy_header(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise FeatureFileError(f"{path}: not a readable numeric .npy file ({exc})") from exc


def _atm_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of an ATM .pt's img_features / text_features (memory-mapped: the values stay on disk)."""
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist (ATM files come in _train.pt/_test.pt pairs)")
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files written with torch.save's legacy format cannot be mapped: read them whole
        obj = None
    except Exception as exc:  # torch raises several types for refused or broken files
        raise FeatureFileError(f"{path}: torch.load(weights_only=True) could not read it ({type(exc).__name__})"
                               ) from exc
    if obj is None:
        part = _read_atm(path)
        return {t: getattr(part, t).shape for t in ("image", "text") if getattr(part, t) is not None}
    if isinstance(obj, torch.Tensor):
        return {"image": tuple(obj.shape)}
    if isinstance(obj, dict) and "img_features" in obj:
        return {"image": tuple(obj["img_features"].shape),
                **({"text": tuple(obj["text_features"].shape)} if obj.get("text_features") is not None else {})}
    found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise FeatureFileError(f"{path}: expected a dict with img_features (and text_features) as ATM writes, "
                           f"found {found}")


def _as_rows(path: Path, key: str, value) -> np.ndarray:
    """A (rows, dim) float32 array; the singleton middle axis of NICE's (N, 1, D) files is dropped."""
    arr = value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[1] == 1:
        arr = arr[:, 0]
    _check_array(path, key, arr, None)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_atm(path: Path) -> PartitionFeatures:
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist (ATM files come in _train.pt/_test.pt pairs)")
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for refused or broken files
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise FeatureFileError(f"{path}: torch.load(weights_only=True) could not read it "
                               f"({lines[0] if lines else type(exc).__name__})") from exc
    if isinstance(obj, torch.Tensor):
        image, text = obj, None
    elif isinstance(obj, dict) and "img_features" in obj:
        image, text = obj["img_features"], obj.get("text_features")
    else:
        found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise FeatureFileError(f"{path}: expected a dict with img_features (and text_features) as ATM writes, "
                               f"found {found}")
    image_rows = _as_rows(path, "img_features", image)
    text_rows = None if text is None else _as_rows(path, "text_features", text)
    if text_rows is not None and text_rows.shape[1] != image_rows.shape[1]:
        raise FeatureFileError(f"{path}: text_features has dimension {text_rows.shape[1]}, img_features "
                               f"{image_rows.shape[1]}")
    return PartitionFeatures(image=image_rows, text=text_rows, meta={"source": "atm", "file": str(path)})


def _read_nice(path: Path, centroid_path: Path | None) -> PartitionFeatures:
    image = _as_rows(path, "image features", _load_plain_npy(path))
    centroid = None
    if centroid_path is not None:
        centroid = _as_rows(centroid_path, "concept centres", _load_plain_npy(centroid_path))
        if centroid.shape[1] != image.shape[1]:
            raise FeatureFileError(f"{centroid_path}: dimension {centroid.shape[1]}, but {path.name} has "
                                   f"{image.shape[1]}")
    return PartitionFeatures(image=image, centroid=centroid, meta={"source": "nice", "file": str(path)})


def _load_plain_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FeatureFileError(f"{path}: not a readable numeric .npy file ({exc})") from exc
