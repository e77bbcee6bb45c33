"""Protocols: named, versioned rules that turn a dataset and a subject into train / validation / sealed test.

* ``intra``: train on the subject's training partition minus the validation concepts; validate on those whole
  held-out **training concepts** (zero-shot, like the test); test on the subject's test partition.
* ``inter`` (leave one subject out): train on every other subject's training partition minus the validation
  concepts; validate on those concepts of the same training subjects; test on the held-out subject's test partition,
  whose subject identity the model never sees.
* ``published`` / ``published-inter``: the same subjects as ``intra`` / ``inter``, but validation, selection and
  scoring as each method's paper ran them (``protocol.validation``, set by ``<name>.<protocol>.yaml`` beside the
  method): held-out training *images* (NICE), no validation (UBP intra), the test partition itself (ATM: the best
  test epoch) or the training subjects' test partitions (UBP inter). Their numbers replay published ones and are not
  comparable to the honest protocols'; a run whose validation reads a test partition is recorded ``test_selected``.

The test partition is a :class:`SealedTest`: nothing of it (EEG or features) is read until :meth:`SealedTest.open`,
which the runner calls once training and model selection are over. Methods never receive a split. Test-selected
validation (``protocol.validation: test`` or ``test-other-subjects``) is opened by the harness, not the method, before
the sealed phase, through :meth:`Protocol.selection_validation` (:meth:`SealedTest.open_for_selection`, logged as a
warning); the seal then stays closed for everything else.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bench import seal
from bench.config_rules import TEST_SELECTED_VALIDATIONS
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
        self.opened_for_selection: str | None = None  # why the harness opened it for model selection, if it did

    def open(self) -> EvalSet:
        seal.guard_test_read(f"SealedTest.open() of sub-{self._subject:02d}")
        self.opened = True
        return self._read()

    def open_for_selection(self, reason: str) -> EvalSet:
        """The harness opens the test partition *before* the sealed phase to validate on it (``protocol.validation:
        test`` / ``test-other-subjects``): labelled, logged and recorded; refused inside the sealed phase like any
        other test read. The evaluator still opens it again, after selection, for the score."""
        seal.guard_test_read(f"SealedTest.open_for_selection() of sub-{self._subject:02d}")
        log.warning("test-selected: %s", reason)
        self.opened_for_selection = reason
        return self._read()

    def _read(self) -> EvalSet:
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


def concat_eval_sets(parts: list[EvalSet]) -> EvalSet:
    """Several retrieval problems as one set, fold k = part k (their text / centroid tables are the same test ones)."""
    if len(parts) == 1:
        return parts[0]
    subjects = [p.subject for p in parts]
    return EvalSet(eeg=np.concatenate([p.eeg for p in parts]), gallery=np.concatenate([p.gallery for p in parts]),
                   fold=np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)]),
                   subject=None if any(s is None for s in subjects) else np.concatenate(subjects),
                   concept=np.concatenate([p.concept for p in parts]), text=parts[0].text,
                   centroid=parts[0].centroid)


@dataclass
class Split:
    train: TrainSet
    val: EvalSet | None  # None: no validation (``none``), or test-selected validation the harness supplies
    test: SealedTest
    info: dict = field(default_factory=dict)


def _capped_count(unit: str, available: int, requested: int) -> tuple[int, dict]:
    """How many training ``unit`` (concepts | images) to hold out: ``protocol.val_<unit>``, capped at 20 %, and the
    record's note when the cap applied."""
    if requested < 1:
        raise ProtocolError(f"protocol.val_{unit} must be >= 1, got {requested}")
    n_val = min(requested, max(1, math.floor(MAX_VAL_SHARE * available)))
    if n_val == requested:
        return n_val, {}
    note = {f"val_{unit}_requested": requested,
            f"val_{unit}_note": f"capped at {MAX_VAL_SHARE:.0%} of {available} training {unit}"}
    log.warning("protocol.val_%s=%d capped to %d (%s)", unit, requested, n_val, note[f"val_{unit}_note"])
    return n_val, note


def choose_val_concepts(n_concepts: int, requested: int, seed: int) -> tuple[np.ndarray, dict]:
    """Held-out training concepts, the same for every run seed (so runs are comparable), capped at 20 %."""
    n_val, note = _capped_count("concepts", n_concepts, requested)
    if n_concepts - n_val < 2:
        raise ProtocolError(f"only {n_concepts} training concepts: too few to hold {n_val} out for validation")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_concepts, size=n_val, replace=False)), note


def choose_val_images(n_images: int, requested: int, seed: int) -> tuple[np.ndarray, dict]:
    """Held-out random training *images* (NICE: 740 of 16,540; their concepts stay in training), capped at 20 %."""
    n_val, note = _capped_count("images", n_images, requested)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_images)[:n_val]), note


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
    #: the ``protocol.validation`` kinds this protocol accepts (the honest protocols: held-out training concepts only)
    validations: ClassVar[tuple[str, ...]] = ("concepts",)
    #: a protocol that replays published procedures names the honest protocol to use instead; it needs each method's
    #: ``<name>.<protocol>.yaml`` (bench/specs.py refuses a method without one)
    honest_counterpart: ClassVar[str | None] = None

    def __init__(self, val_concepts: int = 100, val_seed: int = 0, train_average: bool = True,
                 test_repetitions: int | None = None, validation: str = "concepts", val_images: int = 740):
        self.val_concepts, self.val_seed = int(val_concepts), int(val_seed)
        self.train_average, self.test_repetitions = bool(train_average), test_repetitions
        if validation not in self.validations:
            raise ProtocolError(f"protocol {self.name} validates on {', '.join(self.validations)}, not {validation!r}")
        self.validation, self.val_images = validation, int(val_images)

    @classmethod
    def from_config(cls, cfg: dict) -> "Protocol":
        p = cfg["protocol"]
        return cls(val_concepts=p["val_concepts"], val_seed=p["val_seed"], train_average=cfg["data"]["train_average"],
                   test_repetitions=cfg["data"]["test_repetitions"], validation=p.get("validation", "concepts"),
                   val_images=p.get("val_images", 740))

    @property
    def test_selected(self) -> bool:
        """Whether validation (hence selection or early stopping) reads a test partition."""
        return self.validation in TEST_SELECTED_VALIDATIONS

    def training_subjects(self, ds: Any, subject: int) -> list[int]:
        raise NotImplementedError

    def subjects_read(self, ds: Any, subject: int) -> list[int]:
        """Every subject whose files a run on ``subject`` reads (its data fingerprint covers exactly these)."""
        return sorted({*self.training_subjects(ds, subject), subject})

    def _held_out(self, ds: Any, image_concept: np.ndarray) -> tuple[np.ndarray, dict]:
        """(training images held out for validation, as a mask; what the record says about them)."""
        if self.validation == "concepts":
            val_concepts, note = choose_val_concepts(len(ds.train_concepts), self.val_concepts, self.val_seed)
            return np.isin(image_concept, val_concepts), {
                "val_concepts": [ds.train_concepts[i] for i in val_concepts], "n_val_concepts": len(val_concepts),
                **note}
        if self.validation == "images":
            val_images, note = choose_val_images(len(image_concept), self.val_images, self.val_seed)
            mask = np.zeros(len(image_concept), dtype=bool)
            mask[val_images] = True
            return mask, {"val_images": val_images.tolist(), "n_val_images": len(val_images), **note}
        return np.zeros(len(image_concept), dtype=bool), {}  # none / test-selected: every training row trains

    def _validation_set(self, ds: Any, feats: Any, val_mask: np.ndarray, image_concept: np.ndarray,
                        val_eeg: list[np.ndarray], val_subj: list[np.ndarray]) -> EvalSet | None:
        """The held-out training rows as retrieval problems shaped like the test (None when nothing is held out)."""
        if self.validation not in ("concepts", "images"):
            return None
        val_imgs = np.flatnonzero(val_mask)
        n_subjects = len(val_eeg)
        if self.validation == "concepts":
            per_concept = ds.images_per_train_concept
            # fold j = the j-th image of every validation concept (and, across training subjects, one fold per
            # subject and image slot): each fold is an n_val-way retrieval shaped like the test
            within = np.arange(len(val_imgs)) % per_concept
            folds = np.concatenate([within + k * per_concept for k in range(n_subjects)])
        else:  # the held-out images of one subject are one retrieval problem (their concepts may repeat)
            folds = np.repeat(np.arange(n_subjects), len(val_imgs))
        val_rows = np.tile(val_imgs, n_subjects)
        return EvalSet(eeg=np.concatenate(val_eeg), gallery=feats.image[val_rows], fold=folds.astype(np.int64),
                       subject=np.concatenate(val_subj) if self.knows_test_subject else None,
                       concept=image_concept[val_rows], text=feats.text)

    def split(self, ds: Any, subject: int) -> Split:
        test_index = _subject_index(ds, subject)
        train_subjects = self.training_subjects(ds, subject)
        image_concept = np.asarray(ds.train_image_concept, dtype=np.int64)
        val_mask, held_out = self._held_out(ds, image_concept)

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
        val = self._validation_set(ds, feats, val_mask, image_concept, val_eeg, val_subj)

        visible_test_subject = test_index if self.knows_test_subject else None
        sealed = SealedTest(ds, subject, self.test_repetitions, visible_test_subject)
        info = {"protocol": self.name, "protocol_version": self.version, "test_subject": subject,
                "train_subjects": train_subjects, "n_train_rows": len(train),
                "n_val_queries": len(val) if val is not None else 0, "validation": self.validation, **held_out,
                "train_average": self.train_average, "test_repetitions": self.test_repetitions,
                **self._test_selected_info(ds, subject)}
        return Split(train=train, val=val, test=sealed, info=info)

    def _test_selection_subjects(self, ds: Any, subject: int) -> list[int]:
        """Whose test partitions validation reads: the test subject's (``test``), the training subjects'
        (``test-other-subjects``), or none."""
        if self.validation == "test":
            return [subject]
        return self.training_subjects(ds, subject) if self.validation == "test-other-subjects" else []

    def _test_selected_info(self, ds: Any, subject: int) -> dict:
        subjects = self._test_selection_subjects(ds, subject)
        if not subjects:
            return {}
        return {"val_test_subjects": subjects,
                "validation_note": f"test-selected: validation is the test partition of "
                                   f"{', '.join(f'sub-{s:02d}' for s in subjects)} (selection and early stopping see "
                                   f"the test images); the harness opened it before the sealed phase"}

    def selection_validation(self, ds: Any, subject: int, label: str = "") -> EvalSet | None:
        """For test-selected validation only (else None): the test partition(s) that validation reads, opened now by
        the harness (before the sealed phase), each subject's its own fold, presented as the test's queries are."""
        subjects = self._test_selection_subjects(ds, subject)
        parts = []
        for s in subjects:
            index = _subject_index(ds, s) if self.knows_test_subject else None
            reason = (f"{label or self.name}: protocol.validation={self.validation} reads the test partition of "
                      f"sub-{s:02d} for model selection / early stopping (as published; not comparable to the "
                      f"honest protocols)")
            parts.append(SealedTest(ds, s, self.test_repetitions, index).open_for_selection(reason))
        return concat_eval_sets(parts) if parts else None


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


PUBLISHED_WORDS = "as published; not comparable to the honest protocols"


@register_protocol("published", description=f"within subject, {PUBLISHED_WORDS}: each method's paper's own validation, "
                                            f"selection and scoring (<name>.published.yaml beside the method; e.g. "
                                            f"NICE's concept centres, ATM's best test epoch)",
                   citation="Song et al., ICLR 2024; Li et al., NeurIPS 2024; Wu et al., CVPR 2025")
class PublishedIntraSubject(IntraSubject):
    name, version = "published", 1
    validations = ("concepts", "images", "none", "test")
    honest_counterpart = "intra"


@register_protocol("published-inter", description=f"leave one subject out, {PUBLISHED_WORDS}: each method's paper's "
                                                  f"own validation and selection (<name>.published-inter.yaml; e.g. "
                                                  f"UBP's early stopping on the other subjects' test EEG)",
                   citation="Wu et al., CVPR 2025")
class PublishedLeaveOneSubjectOut(LeaveOneSubjectOut):
    name, version = "published-inter", 1
    validations = ("concepts", "images", "none", "test", "test-other-subjects")
    honest_counterpart = "inter"
