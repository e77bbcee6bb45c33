"""Protocols: named, versioned rules that turn a dataset and a subject into train / validation / sealed test.

* ``intra``: train on the subject's training partition minus the validation concepts; validate on those whole
  held-out **training concepts** (zero-shot, like the test); test on the subject's test partition.
* ``inter`` (leave one subject out): train on every other subject's training partition minus the validation
  concepts; validate on those concepts of the same training subjects; test on the held-out subject's test partition,
  whose subject identity the model never sees.

The test partition is a :class:`SealedTest`: nothing of it (EEG or features) is read until :meth:`SealedTest.open`,
which the runner calls once training and model selection are over. Methods never receive a split.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bench import seal
from bench.errors import UserError
from bench.registry import register_protocol

log = logging.getLogger(__name__)

#: at most this share of the training concepts is held out for validation (see `protocol.val_concepts`)
MAX_VAL_SHARE = 0.2


class ProtocolError(UserError, ValueError):
    """A protocol cannot be applied (unknown subject, too few subjects or concepts)."""


@dataclass
class TrainSet:
    """Training rows. ``eeg`` rows point into the ``image`` table (one row per image) and the ``text`` table
    (one row per training concept); several EEG rows may share an image (single trials, several subjects)."""

    eeg: np.ndarray              # (N, C, T) float16
    row_image: np.ndarray        # (N,) int64 into image
    row_concept: np.ndarray      # (N,) int64 into text
    row_subject: np.ndarray      # (N,) int64, 0-based index into the dataset's subjects
    image: np.ndarray            # (n_images, D) float32
    text: np.ndarray | None      # (n_concepts, D) float32

    def __len__(self) -> int:
        return int(self.eeg.shape[0])


@dataclass
class EvalSet:
    """Queries and their gallery. Query i's correct target is gallery row i; retrieval is ranked within a fold."""

    eeg: np.ndarray              # (M, C, T) float32, repetitions averaged
    gallery: np.ndarray          # (M, D) float32 image features
    fold: np.ndarray             # (M,) int64: queries compete only with gallery rows of the same fold
    subject: np.ndarray | None   # (M,) int64, or None where the model must not know the subject
    concept: np.ndarray          # (M,) int64 into text / centroid
    text: np.ndarray | None = None      # (n_concepts, D)
    centroid: np.ndarray | None = None  # (n_concepts, D) NICE-style concept centres

    def __len__(self) -> int:
        return int(self.eeg.shape[0])


class SealedTest:
    """The test partition, unread until :meth:`open`. Opening is one-way and recorded."""

    def __init__(self, dataset: Any, subject: int, n_reps: int | None, subject_index: int | None):
        self._dataset, self._subject, self._n_reps, self._subject_index = dataset, subject, n_reps, subject_index
        self.opened = False

    def open(self) -> EvalSet:
        seal.guard_test_read(f"SealedTest.open() of sub-{self._subject:02d}")
        self.opened = True
        ds = self._dataset
        eeg = np.asarray(ds.load_test(self._subject, n_reps=self._n_reps), dtype=np.float32)
        feats = ds.test_features()
        n = eeg.shape[0]
        if feats.image.shape[0] != n:
            raise ProtocolError(f"test features have {feats.image.shape[0]} image rows but sub-{self._subject:02d} "
                                f"has {n} test images")
        # THINGS test partition: one image per concept, in concept order
        concept = np.arange(n, dtype=np.int64)
        subject = None if self._subject_index is None else np.full(n, self._subject_index, dtype=np.int64)
        return EvalSet(eeg=eeg, gallery=feats.image, fold=np.zeros(n, dtype=np.int64), subject=subject,
                       concept=concept, text=feats.text, centroid=feats.centroid)


@dataclass
class Split:
    train: TrainSet
    val: EvalSet
    test: SealedTest
    info: dict = field(default_factory=dict)


def choose_val_concepts(n_concepts: int, requested: int, seed: int) -> tuple[np.ndarray, dict]:
    """Held-out training concepts, the same for every run seed (so runs are comparable), capped at 20 %."""
    if requested < 1:
        raise ProtocolError(f"protocol.val_concepts must be >= 1, got {requested}")
    cap = max(1, math.floor(MAX_VAL_SHARE * n_concepts))
    n_val = min(requested, cap)
    note = {}
    if n_val < requested:
        note = {"val_concepts_requested": requested,
                "val_concepts_note": f"capped at {MAX_VAL_SHARE:.0%} of {n_concepts} training concepts"}
        log.warning("protocol.val_concepts=%d capped to %d (%s)", requested, n_val, note["val_concepts_note"])
    if n_concepts - n_val < 2:
        raise ProtocolError(f"only {n_concepts} training concepts: too few to hold {n_val} out for validation")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_concepts, size=n_val, replace=False)), note


def _subject_index(ds: Any, subject: int) -> int:
    if subject not in ds.subjects:
        raise ProtocolError(f"subject {subject} is not in the dataset at {ds.root} (subjects: {ds.subjects})")
    return ds.subjects.index(subject)


def _train_and_val_rows(ds: Any, subject: int, val_mask_img: np.ndarray, average: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train EEG rows float16, their image indices, validation EEG float32 averaged) for one subject."""
    train_imgs = np.flatnonzero(~val_mask_img)
    val_imgs = np.flatnonzero(val_mask_img)
    if average:
        full = ds.load_train(subject, average=True)
        return (np.asarray(full[train_imgs], dtype=np.float16), train_imgs,
                np.asarray(full[val_imgs], dtype=np.float32))
    trials = ds.load_train(subject, average=False)  # (N, R, C, T) float16
    n_reps = trials.shape[1]
    train = np.asarray(trials[train_imgs], dtype=np.float16).reshape(-1, *trials.shape[2:])
    val = np.asarray(trials[val_imgs], dtype=np.float32).mean(axis=1)
    return train, np.repeat(train_imgs, n_reps), val


class Protocol:
    name: ClassVar[str]
    version: ClassVar[int]
    #: whether the model may know which subject a query comes from; validation queries are presented exactly as
    #: test queries are, so selection measures the condition the test measures
    knows_test_subject: ClassVar[bool]

    def __init__(self, val_concepts: int = 100, val_seed: int = 0, train_average: bool = True,
                 test_repetitions: int | None = None):
        self.val_concepts, self.val_seed = int(val_concepts), int(val_seed)
        self.train_average, self.test_repetitions = bool(train_average), test_repetitions

    @classmethod
    def from_config(cls, cfg: dict) -> "Protocol":
        return cls(val_concepts=cfg["protocol"]["val_concepts"], val_seed=cfg["protocol"]["val_seed"],
                   train_average=cfg["data"]["train_average"], test_repetitions=cfg["data"]["test_repetitions"])

    def training_subjects(self, ds: Any, subject: int) -> list[int]:
        raise NotImplementedError

    def subjects_read(self, ds: Any, subject: int) -> list[int]:
        """Every subject whose files a run on ``subject`` reads (its data fingerprint covers exactly these)."""
        return sorted({*self.training_subjects(ds, subject), subject})

    def split(self, ds: Any, subject: int) -> Split:
        test_index = _subject_index(ds, subject)
        train_subjects = self.training_subjects(ds, subject)
        n_concepts = len(ds.train_concepts)
        val_concepts, note = choose_val_concepts(n_concepts, self.val_concepts, self.val_seed)
        image_concept = np.asarray(ds.train_image_concept, dtype=np.int64)
        val_mask = np.isin(image_concept, val_concepts)

        feats = ds.train_features()
        if feats.image.shape[0] != image_concept.shape[0]:
            raise ProtocolError(f"training features have {feats.image.shape[0]} image rows but the EEG has "
                                f"{image_concept.shape[0]} training images ({ds.feature_path})")
        eeg_parts, img_parts, subj_parts, val_eeg, val_subj = [], [], [], [], []
        for s in train_subjects:
            s_index = _subject_index(ds, s)
            train, rows, val = _train_and_val_rows(ds, s, val_mask, self.train_average)
            eeg_parts.append(train)
            img_parts.append(rows)
            subj_parts.append(np.full(len(rows), s_index, dtype=np.int64))
            val_eeg.append(val)
            val_subj.append(np.full(len(val), s_index, dtype=np.int64))
        row_image = np.concatenate(img_parts)
        train = TrainSet(eeg=np.concatenate(eeg_parts) if len(eeg_parts) > 1 else eeg_parts[0],
                         row_image=row_image, row_concept=image_concept[row_image],
                         row_subject=np.concatenate(subj_parts), image=feats.image, text=feats.text)

        val_imgs = np.flatnonzero(val_mask)
        per_concept = ds.images_per_train_concept
        # fold j = the j-th image of every validation concept (and, across training subjects, one fold per
        # subject and image slot): each fold is an n_val-way retrieval shaped like the test
        within = np.arange(len(val_imgs)) % per_concept
        folds = np.concatenate([within + k * per_concept for k in range(len(train_subjects))])
        val_rows = np.tile(val_imgs, len(train_subjects))
        val = EvalSet(eeg=np.concatenate(val_eeg), gallery=feats.image[val_rows], fold=folds.astype(np.int64),
                      subject=np.concatenate(val_subj) if self.knows_test_subject else None,
                      concept=image_concept[val_rows], text=feats.text)

        visible_test_subject = test_index if self.knows_test_subject else None
        sealed = SealedTest(ds, subject, self.test_repetitions, visible_test_subject)
        info = {"protocol": self.name, "protocol_version": self.version, "test_subject": subject,
                "train_subjects": train_subjects, "n_train_rows": len(train), "n_val_queries": len(val),
                "val_concepts": [ds.train_concepts[i] for i in val_concepts], "n_val_concepts": len(val_concepts),
                "train_average": self.train_average, "test_repetitions": self.test_repetitions, **note}
        return Split(train=train, val=val, test=sealed, info=info)


@register_protocol("intra", description="within subject: train and test on one subject; validation on held-out "
                                         "training concepts", citation="Gifford et al., NeuroImage 2022")
class IntraSubject(Protocol):
    name, version, knows_test_subject = "intra", 1, True

    def training_subjects(self, ds: Any, subject: int) -> list[int]:
        return [subject]


@register_protocol("inter", description="leave one subject out: train on the others, test on the held-out "
                                         "subject's test partition", citation="Song et al., ICLR 2024 (NICE)")
class LeaveOneSubjectOut(Protocol):
    name, version, knows_test_subject = "inter", 2, False  # 2: validation queries carry no subject index

    def training_subjects(self, ds: Any, subject: int) -> list[int]:
        others = [s for s in ds.subjects if s != subject]
        if not others:
            raise ProtocolError(f"leave-one-subject-out needs at least 2 subjects; {ds.root} has {ds.subjects}")
        return others
