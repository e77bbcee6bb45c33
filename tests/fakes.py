"""An in-memory dataset implementing the ThingsEEG contract, recording every read (for leak-barrier tests).

EEG is a fixed linear image of the image features plus noise, so a linear read-out decodes it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data.features import PartitionFeatures, l2_normalize


class InMemoryThingsEEG:
    def __init__(self, n_subjects=3, n_concepts=20, per_concept=3, n_test=12, n_chans=4, n_times=10, reps=4,
                 test_reps=8, dim=8, noise=0.3, seed=0, with_text=True):
        rng = np.random.default_rng(seed)
        self.root = Path("/in-memory")
        self.subjects = list(range(1, n_subjects + 1))
        self.ch_names = [f"E{i}" for i in range(n_chans)]
        self.sfreq, self.times = 100.0, np.arange(n_times) / 100.0
        self.n_chans, self.n_times = n_chans, n_times
        self.train_concepts = [f"c{i:03d}" for i in range(n_concepts)]
        self.test_concepts = [f"t{i:03d}" for i in range(n_test)]
        self.images_per_train_concept = per_concept
        self.train_image_concept = np.repeat(np.arange(n_concepts), per_concept)
        self.n_train_images, self.n_test_images = n_concepts * per_concept, n_test
        self.n_test_reps = test_reps
        self.feature_path = Path("/in-memory/features.npz")
        concept_latent = rng.normal(size=(n_concepts, dim))
        self._train_image = l2_normalize(concept_latent[self.train_image_concept] + 0.5 * rng.normal(size=(n_concepts * per_concept, dim)))
        self._train_text = l2_normalize(concept_latent) if with_text else None
        test_latent = rng.normal(size=(n_test, dim))
        self._test_image = l2_normalize(test_latent + 0.5 * rng.normal(size=(n_test, dim)))
        self._test_text = l2_normalize(test_latent) if with_text else None
        mixing = rng.normal(size=(n_subjects, dim, n_chans * n_times))
        self._train = {s: (self._train_image @ mixing[i]).reshape(-1, 1, n_chans, n_times)
                       + noise * rng.normal(size=(len(self._train_image), reps, n_chans, n_times))
                       for i, s in enumerate(self.subjects)}
        self._test = {s: (self._test_image @ mixing[i]).reshape(-1, 1, n_chans, n_times)
                      + noise * rng.normal(size=(n_test, test_reps, n_chans, n_times))
                      for i, s in enumerate(self.subjects)}
        self.reads: list[tuple] = []

    def fingerprint(self, subjects=None) -> str:
        return "inmem-" + "-".join(map(str, subjects or self.subjects))

    def load_train(self, subject, average=True):
        self.reads.append(("train_eeg", subject))
        x = self._train[subject]
        return x.mean(1).astype(np.float32) if average else x.astype(np.float16)

    def load_test(self, subject, n_reps=None):
        self.reads.append(("test_eeg", subject))
        x = self._test[subject]
        return x[:, :n_reps].mean(1).astype(np.float32)

    def test_repetitions(self, subject) -> int:
        return self.n_test_reps  # a header read: not recorded as a read of test data

    def feature_tables(self, partition):
        """Shapes only (like the real dataset's header read): not recorded as a read."""
        arrays = {"image": getattr(self, f"_{partition}_image"), "text": getattr(self, f"_{partition}_text")}
        return {name: a.shape for name, a in arrays.items() if a is not None}

    def train_features(self):
        self.reads.append(("train_features",))
        return PartitionFeatures(image=self._train_image.copy(), text=None if self._train_text is None else self._train_text.copy())

    def test_features(self):
        self.reads.append(("test_features",))
        return PartitionFeatures(image=self._test_image.copy(), text=None if self._test_text is None else self._test_text.copy())
