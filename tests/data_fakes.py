"""Small THINGS-EEG data roots written the way the published code writes them (for the data-layer tests).

* official OSF: ``np.save(path, {'preprocessed_eeg_data', 'ch_names', 'times'})`` (gifale95/eeg_encoding
  ``preprocessing_utils.save_prepr``): float64, 17 channels, 100 Hz, −0.2…0.79 s;
* NICE/ATM: ``pickle.dump`` of the same dict: float64, 63 channels, 250 samples, 300 ``times`` (−0.2…0.996 s);
* UBP: ``torch.save(dict, path, pickle_protocol=5)`` of numpy arrays: float16 ``eeg``, ``label``, ``img``, ``text``,
  ``session``, ``ch_names``, ``times`` (``preprocess/process_eeg_whiten.py``).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.channels import OCCIPITAL_17, THINGS_63
from bench.data.features import FeatureSet, PartitionFeatures, l2_normalize, save_feature_set

TRAIN_CONCEPTS = ["aardvark", "aircraft_carrier", "bat1", "zebra"]
TEST_CONCEPTS = ["antelope", "backscratcher", "wok"]
IMAGES_PER_CONCEPT = 3
TRAIN_REPS, TEST_REPS = 4, 6


@dataclass
class FakeRoot:
    root: Path
    eeg_dir: Path
    train: dict[int, np.ndarray]  # subject -> (images, reps, C, T) as written
    test: dict[int, np.ndarray]
    ch_names: list[str]
    times: np.ndarray  # the times of the data samples


def train_folders() -> list[str]:
    return [f"{i + 1:05d}_{c}" for i, c in enumerate(TRAIN_CONCEPTS)]


def test_folders() -> list[str]:
    return [f"{i + 1:05d}_{c}" for i, c in enumerate(TEST_CONCEPTS)]


def eeg_arrays(rng: np.random.Generator, n_channels: int, n_samples: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    n_train = len(TRAIN_CONCEPTS) * IMAGES_PER_CONCEPT
    train = rng.standard_normal((n_train, TRAIN_REPS, n_channels, n_samples)).astype(dtype)
    test = rng.standard_normal((len(TEST_CONCEPTS), TEST_REPS, n_channels, n_samples)).astype(dtype)
    return train, test


def write_official(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    times = np.arange(-20, 80) / 100.0
    train, test = eeg_arrays(rng, 17, 100, np.float64)
    for name, data in (("preprocessed_eeg_training.npy", train), ("preprocessed_eeg_test.npy", test)):
        np.save(folder / name, {"preprocessed_eeg_data": data, "ch_names": list(OCCIPITAL_17), "times": times})
    return train, test, times


def write_nice(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    times = np.arange(-50, 250) / 250.0
    train, test = eeg_arrays(rng, 63, 250, np.float64)
    for name, data in (("preprocessed_eeg_training.npy", train), ("preprocessed_eeg_test.npy", test)):
        with open(folder / name, "wb") as fh:
            pickle.dump({"preprocessed_eeg_data": data, "ch_names": list(THINGS_63), "times": times}, fh)
    return train, test, times[50:]


def write_ubp(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    times = np.arange(-50, 250) / 250.0
    train, test = eeg_arrays(rng, 63, 250, np.float16)
    for name, data, folders, reps in (("train.pt", train, train_folders(), TRAIN_REPS),
                                      ("test.pt", test, test_folders(), TEST_REPS)):
        per_concept = IMAGES_PER_CONCEPT if name == "train.pt" else 1
        images = [f"{'train' if name == 'train.pt' else 'test'}_images/{f}/{f.split('_', 1)[1]}_{k + 1:02d}s.jpg"
                  for f in folders for k in range(per_concept)]
        labels = [i for i in range(len(folders)) for _ in range(per_concept)]
        texts = [p.split("/")[-1].rsplit("_", 1)[0] for p in images]
        payload = {
            "eeg": data,
            "label": np.tile(np.array(labels)[:, None], (1, reps)),
            "img": np.tile(np.array(images)[:, None], (1, reps)),
            "text": np.tile(np.array(texts)[:, None], (1, reps)),
            "session": np.zeros((len(images), reps)),
            "ch_names": list(THINGS_63),
            "times": times,
        }
        torch.save(payload, folder / name, pickle_protocol=5)
    return train, test, times[50:]


WRITERS = {"osf-npy": write_official, "nice-pickle": write_nice, "ubp-pt": write_ubp}


def write_image_metadata(folder: Path) -> Path:
    """The official image_metadata.npy: an np.save'd dict of per-image lists."""
    folder.mkdir(parents=True, exist_ok=True)
    train = [(f, f"{f.split('_', 1)[1]}_{k + 1:02d}{'b' if k == 0 else 's'}.jpg")
             for f in train_folders() for k in range(IMAGES_PER_CONCEPT)]
    test = [(f, f"{f.split('_', 1)[1]}_01b.jpg") for f in test_folders()]
    meta = {"train_img_concepts": [c for c, _ in train], "train_img_concepts_THINGS": [c for c, _ in train],
            "train_img_files": [f for _, f in train], "test_img_concepts": [c for c, _ in test],
            "test_img_concepts_THINGS": [c for c, _ in test], "test_img_files": [f for _, f in test]}
    np.save(folder / "image_metadata.npy", meta)
    return folder / "image_metadata.npy"


def write_image_folders(folder: Path, train_name: str = "training_images") -> None:
    """Empty image files in the THINGS folder layout (only the names matter to the loaders)."""
    for sub, folders, per_concept in ((train_name, train_folders(), IMAGES_PER_CONCEPT),
                                      ("test_images", test_folders(), 1)):
        for f in folders:
            (folder / sub / f).mkdir(parents=True, exist_ok=True)
            for k in range(per_concept):
                (folder / sub / f / f"{f.split('_', 1)[1]}_{k + 1:02d}s.jpg").write_bytes(b"")


def write_features(folder: Path, rng: np.random.Generator, dim: int = 16) -> Path:
    n_train = len(TRAIN_CONCEPTS) * IMAGES_PER_CONCEPT
    fs = FeatureSet(
        train=PartitionFeatures(image=l2_normalize(rng.standard_normal((n_train, dim))),
                                text=l2_normalize(rng.standard_normal((len(TRAIN_CONCEPTS), dim)))),
        test=PartitionFeatures(image=l2_normalize(rng.standard_normal((len(TEST_CONCEPTS), dim))),
                               text=l2_normalize(rng.standard_normal((len(TEST_CONCEPTS), dim)))),
        meta={"model": "fake"})
    return save_feature_set(folder / "features.npz", fs)


def make_root(base: Path, fmt: str, *, subjects=(1, 2), eeg_subfolder: str = "Preprocessed_data_250Hz",
              concepts: str = "metadata", seed: int = 0) -> FakeRoot:
    """A data root holding ``subjects`` in format ``fmt`` under ``base/eeg_subfolder`` ('' = directly in base)."""
    rng = np.random.default_rng(seed)
    eeg_dir = base / eeg_subfolder if eeg_subfolder else base
    trains, tests, times = {}, {}, None
    for s in subjects:
        trains[s], tests[s], times = WRITERS[fmt](eeg_dir / f"sub-{s:02d}", rng)
    if concepts == "metadata":
        write_image_metadata(base / "image_set")
    elif concepts == "folders":
        write_image_folders(base / "image_set")
    write_features(base, rng)
    ch_names = list(OCCIPITAL_17) if fmt == "osf-npy" else list(THINGS_63)
    return FakeRoot(base, eeg_dir, trains, tests, ch_names, times)


def write_atm_features(folder, seed, n_train=12, n_train_concepts=4, n_test=3, dim=32, model="ViT-H-14"):
    """ATM's eegdatasets_leaveone.py: torch.save({'text_features': ..., 'img_features': ...}) per partition."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": (n_train, n_train_concepts), "test": (n_test, n_test)}
    out = {}
    for partition, (n_img, n_txt) in parts.items():
        out[partition] = {"img_features": torch.randn(n_img, dim, generator=torch.Generator().manual_seed(seed)),
                          "text_features": torch.randn(n_txt, dim, generator=torch.Generator().manual_seed(seed + 1))}
        torch.save(out[partition], folder / f"{model}_features_{partition}.pt")
    return out


def write_nice_features(folder, rng, n_train=12, n_test=3, dim=24, centres=True):
    """NICE's obtain_feature_maps_clip.py: np.save of (N, 1, 768) arrays; center_clip.npy (200, 768)."""
    folder.mkdir(parents=True, exist_ok=True)
    train = rng.standard_normal((n_train, 1, dim)).astype(np.float32)
    test = rng.standard_normal((n_test, 1, dim)).astype(np.float32)
    np.save(folder / "clip_feature_maps_training.npy", train)
    np.save(folder / "clip_feature_maps_test.npy", test)
    centre = rng.standard_normal((n_test, dim)).astype(np.float32)
    if centres:
        np.save(folder / "center_clip.npy", centre)
    return train, test, centre
