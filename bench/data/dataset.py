"""ThingsEEG: one data root seen through one set of selection options.

Train and test are read by separate calls and never together: ``load_train`` and ``train_features`` open only
training files, so code that builds a training split cannot touch test EEG or test features (the leak barrier).
Opening a dataset reads the first subject's training-file header, the concept list and, lazily, the feature files.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from bench import seal
from bench.errors import ConfigError
from bench.data.cache import EEGHeader, cached_eeg, file_fingerprint, peek_header
from bench.data.channels import requested_channels
from bench.data.errors import DataFormatError, FeatureFileError
from bench.data.features import (PartitionFeatures, feature_files, find_feature_file, load_partition_any,
                                 partition_tables)
from bench.data.concepts import concept_name, make_prompts, refuse_overlapping_concepts
from bench.data.layout import DataLayout, find_image_list, find_layout
from bench.data.sidecar import find_sidecar, read_sidecar
from bench.registry import register_dataset

#: Tolerance when matching a window edge to a sample time (times are stored as floats).
_TIME_EPS = 1e-6


class ThingsEEG:
    """A THINGS-EEG data root with channel and time selection applied (see :meth:`open`)."""

    def __init__(self, layout: DataLayout, *, header: EEGHeader, channels: str | Sequence[str], tmin: float,
                 tmax: float, features: Path | None, prompt_template: str, underscores_to_spaces: bool):
        self.layout = layout
        self.root: Path = layout.root
        self.subjects: list[int] = sorted(layout.subjects)
        self.ch_names: list[str] = requested_channels(channels)
        missing = [c for c in self.ch_names if c not in header.ch_names]
        if missing:
            raise DataFormatError(
                f"{header.path}: has {len(header.ch_names)} channels and lacks {', '.join(missing[:8])}"
                f"{' ...' if len(missing) > 8 else ''} requested by data.channels={channels!r}; choose channels the "
                f"files hold (e.g. occipital17 for the official 17-channel data)")
        if not tmin < tmax:
            raise ConfigError(f"data.tmin ({tmin}) must be smaller than data.tmax ({tmax})")
        self.tmin, self.tmax = float(tmin), float(tmax)
        self.sfreq: float = header.sfreq
        self.times: np.ndarray = header.times[self._window(header)]
        self.n_chans, self.n_times = len(self.ch_names), len(self.times)

        self.images = find_image_list(layout)
        self.train_concepts = [concept_name(c) for c in self.images.train_concepts]
        self.test_concepts = [concept_name(c) for c in self.images.test_concepts]
        refuse_overlapping_concepts(self.train_concepts, self.test_concepts, self.images.source)
        self.images_per_train_concept: int = self.images.images_per_concept("train")
        self.n_train_images, self.n_test_images = len(self.images.train_images), len(self.images.test_images)
        self.train_image_concept = np.arange(self.n_train_images, dtype=np.int64) // self.images_per_train_concept
        if header.shape[0] != self.n_train_images:
            raise DataFormatError(f"{header.path}: {header.shape[0]} training images, but {self.images.source} lists "
                                  f"{self.n_train_images}")

        try:
            make_prompts(["x"], prompt_template, False)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"data.prompt_template {prompt_template!r} must contain {{concept}} and no other "
                              f"braces ({exc})") from None
        self.prompt_template, self.underscores_to_spaces = prompt_template, bool(underscores_to_spaces)
        self._features = features
        seal.mark_test_files(layout.subject(s).test for s in self.subjects)
        sidecar = find_sidecar(layout.search_dirs())
        self._preprocessing = read_sidecar(sidecar) if sidecar else None  # a malformed one fails here, not mid-run

    # --- construction ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path | None, *, channels: str | Sequence[str] = "all63", tmin: float = 0.0,
             tmax: float = 1.0, features: str | Path | None = None,
             prompt_template: str = "This picture is {concept}", underscores_to_spaces: bool = False,
             synthetic_preset: str = "default") -> "ThingsEEG":
        """Open a data root; ``root=None`` opens the default synthetic dataset (generated on first use, seed 0).

        ``features`` is a feature file or folder (ours, ATM .pt, NICE .npy); by default the data root is searched.
        """
        if root is None:
            from bench.data.synthetic import ensure_synthetic

            root = ensure_synthetic(synthetic_preset, seed=0)
        layout = find_layout(root)
        first = layout.subject(min(layout.subjects))
        header = peek_header(first.train)
        feature_path = Path(features).expanduser() if features is not None else find_feature_file(layout.search_dirs())
        return cls(layout, header=header, channels=channels, tmin=tmin, tmax=tmax, features=feature_path,
                   prompt_template=prompt_template, underscores_to_spaces=underscores_to_spaces)

    # --- EEG ---------------------------------------------------------------------------------------------------
    def load_train(self, subject: int, average: bool = True) -> np.ndarray:
        """(n_train_images, C, T) averaged over repetitions, or (n_train_images, R, C, T) single trials, float16.

        The average is summed in float32 and stored in float16 (half the memory of a float32 copy; training converts
        it per batch). Single trials are a read-only memory map of the cache when no selection is needed, else an
        array. Data far from unit scale (e.g. in volts, which float16 would truncate) come back as float32.
        """
        cached = cached_eeg(self.layout.subject(subject).train)
        self._check_rows(cached.header, self.n_train_images, "training")
        channels, samples = self._selection(cached.header)
        return cached.mean(channels, samples, dtype=np.float16) if average else cached.trials(channels, samples)

    def load_test(self, subject: int, n_reps: int | None = None) -> np.ndarray:
        """float32 (n_test_images, C, T): the mean of all repetitions, or of the first ``n_reps``."""
        seal.guard_test_read(f"ThingsEEG.load_test(sub-{subject:02d})")
        cached = cached_eeg(self.layout.subject(subject).test)
        self._check_rows(cached.header, self.n_test_images, "test")
        reps = cached.shape[1]
        if n_reps is not None and not (isinstance(n_reps, (int, np.integer)) and 1 <= n_reps <= reps):
            raise ConfigError(f"data.test_repetitions={n_reps!r}: {cached.header.path} has {reps} test repetitions; "
                              f"choose 1..{reps} or null for all")
        channels, samples = self._selection(cached.header)
        return cached.mean(channels, samples, n_reps)

    def test_repetitions(self, subject: int) -> int:
        """How many test repetitions the subject's file holds (reads the test file's header)."""
        return peek_header(self.layout.subject(subject).test).shape[1]

    def _check_rows(self, header: EEGHeader, expected: int, what: str) -> None:
        if header.shape[0] != expected:
            raise DataFormatError(f"{header.path}: {header.shape[0]} {what} images, but {self.images.source} lists "
                                  f"{expected}")

    def _selection(self, header: EEGHeader) -> tuple[np.ndarray | None, slice]:
        missing = [c for c in self.ch_names if c not in header.ch_names]
        if missing:
            raise DataFormatError(f"{header.path}: lacks channel(s) {', '.join(missing)} that the dataset selects "
                                  f"(its ch_names differ from the first subject's)")
        index = np.array([header.ch_names.index(c) for c in self.ch_names], dtype=np.int64)
        channels = None if np.array_equal(index, np.arange(header.shape[2])) else index
        samples = self._window(header)
        n = len(range(*samples.indices(header.shape[3])))
        if n != self.n_times or abs(header.sfreq - self.sfreq) > 1e-6 * self.sfreq:
            raise DataFormatError(f"{header.path}: {header.sfreq:g} Hz and {n} samples in "
                                  f"[{self.tmin}, {self.tmax}) s, but the first subject has {self.sfreq:g} Hz and "
                                  f"{self.n_times}")
        return channels, samples

    def _window(self, header: EEGHeader) -> slice:
        """Samples with tmin <= t < tmax, as a slice (the times are evenly spaced)."""
        inside = np.flatnonzero((header.times >= self.tmin - _TIME_EPS) & (header.times < self.tmax - _TIME_EPS))
        if inside.size == 0:
            raise ConfigError(f"data.tmin/tmax [{self.tmin}, {self.tmax}) s selects no sample of {header.path} "
                              f"(its times span {header.times[0]:.3f}..{header.times[-1]:.3f} s)")
        return slice(int(inside[0]), int(inside[-1]) + 1)

    # --- concepts, prompts, features ---------------------------------------------------------------------------
    def train_prompts(self) -> list[str]:
        return make_prompts(self.train_concepts, self.prompt_template, self.underscores_to_spaces)

    def test_prompts(self) -> list[str]:
        return make_prompts(self.test_concepts, self.prompt_template, self.underscores_to_spaces)

    @property
    def feature_path(self) -> Path:
        if self._features is None:
            raise FeatureFileError(
                f"{self.root}: no feature file found (features.npz, <model>_features_train.pt or "
                f"clip_feature_maps_training.npy); set data.features to one, or extract features first")
        return self._features

    def train_features(self) -> PartitionFeatures:
        return self._features_of("train", self.n_train_images, len(self.train_concepts))

    def test_features(self) -> PartitionFeatures:
        seal.guard_test_read("ThingsEEG.test_features()")
        return self._features_of("test", self.n_test_images, len(self.test_concepts))

    def feature_tables(self, partition: str) -> dict[str, tuple[int, int]]:
        """{image|text|centroid: (rows, dim)} the feature file holds for ``partition``, from its headers: a run checks
        the sealed test partition's tables before training without reading them."""
        return partition_tables(self.feature_path, partition)  # type: ignore[arg-type]

    def _features_of(self, partition: str, n_images: int, n_concepts: int) -> PartitionFeatures:
        feats = load_partition_any(self.feature_path, partition)  # type: ignore[arg-type]
        where = f"{self.feature_path} ({partition})"
        if feats.image.shape[0] != n_images:
            raise FeatureFileError(f"{where}: {feats.image.shape[0]} image feature rows, but the EEG has "
                                   f"{n_images} {partition} images")
        for key in ("text", "centroid"):
            value = getattr(feats, key)
            if value is not None and value.shape[0] != n_concepts:
                raise FeatureFileError(f"{where}: {value.shape[0]} {key} feature rows, but there are {n_concepts} "
                                       f"{partition} concepts")
        return feats

    # --- identity ----------------------------------------------------------------------------------------------
    @property
    def preprocessing(self) -> dict | None:
        """How `bench preprocess` made these files (its ``preprocessing.json``), a copy; None for other data roots."""
        return copy.deepcopy(self._preprocessing)

    @property
    def is_synthetic(self) -> bool:
        """Whether the EEG is synthetic: a `bench synth` output (it has ``synthetic.json``), or `bench preprocess`'s
        output of a synthetic raw root. Numbers on it are not comparable to published THINGS-EEG numbers."""
        raw_root = (self._preprocessing or {}).get("raw_root")
        folders = [*self.layout.search_dirs(), *([Path(raw_root)] if raw_root else [])]
        return any((folder / "synthetic.json").is_file() for folder in folders)

    def fingerprint(self, subjects: list[int] | None = None) -> str:
        """A stable hash of the EEG files of ``subjects`` (default: all), the selection options and the features."""
        chosen = self.subjects if subjects is None else sorted(int(s) for s in subjects)
        eeg = {}
        for s in chosen:
            files = self.layout.subject(s)
            eeg[str(s)] = [file_fingerprint(files.train), file_fingerprint(files.test)]
        feats = {part: [file_fingerprint(p) for p in feature_files(self.feature_path, part)[1]]  # type: ignore[arg-type]
                 for part in ("train", "test")}
        key = {"version": 1, "eeg": eeg, "features": feats, "channels": self.ch_names,
               "window": [round(float(self.times[0]), 6), self.n_times, self.sfreq],
               "concepts": hashlib.sha256("\n".join(self.images.train_images + self.images.test_images).encode())
               .hexdigest()[:16],
               "prompts": [self.prompt_template, self.underscores_to_spaces]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def __repr__(self) -> str:
        return (f"ThingsEEG({str(self.root)!r}, subjects={self.subjects}, {self.n_chans} channels × {self.n_times} "
                f"samples @ {self.sfreq:g} Hz, {len(self.train_concepts)}×{self.images_per_train_concept} train "
                f"images, {self.n_test_images} test images)")


@register_dataset("things-eeg", description="THINGS-EEG (10 subjects; 1654 training concepts × 10 images × 4 reps, "
                  "200 test concepts × 80 reps) from the official, NICE/ATM 250 Hz or UBP files",
                  citation="Gifford et al., NeuroImage 2022")
def things_eeg(root: str | Path | None = None, **options) -> ThingsEEG:
    return ThingsEEG.open(root, **options)


@register_dataset("synthetic-things-eeg", description="synthetic THINGS-EEG (bench synth): known generative model, "
                  "real channel positions, THINGS shapes at preset sizes (tiny, default, full)")
def synthetic_things_eeg(preset: str = "default", seed: int = 0, **options) -> ThingsEEG:
    from bench.data.synthetic import ensure_synthetic

    return ThingsEEG.open(ensure_synthetic(preset, seed=seed), **options)
