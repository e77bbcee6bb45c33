"""`bench data check`: read every file of a data root the way a run would, and say precisely what is wrong.

Each subject's two files are converted into the cache (which is how every value gets checked for NaN/Inf), their
shapes, channels and times compared with the concept list and with each other, and the feature files' row counts
compared with the EEG's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.data.cache import EEGHeader, cached_eeg, peek_header
from bench.data.concepts import concept_name, refuse_overlapping_concepts
from bench.data.errors import DataFormatError, DataRootError, FeatureFileError, NonFiniteDataError
from bench.data.features import feature_files, find_feature_file, load_partition_any
from bench.data.formats import ImageList
from bench.data.layout import find_image_list, find_layout


@dataclass
class SubjectReport:
    subject: int
    format: str = "?"
    train_shape: tuple | None = None
    test_shape: tuple | None = None
    n_channels: int | None = None
    sfreq: float | None = None
    span: tuple[float, float] | None = None
    nonfinite: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    root: Path
    eeg_dir: Path
    concept_source: Path | None = None
    n_train_concepts: int | None = None
    images_per_train_concept: int | None = None
    n_test_concepts: int | None = None
    features: Path | None = None
    feature_rows: dict[str, str] = field(default_factory=dict)
    subjects: list[SubjectReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the problems that are absent inputs (concept list, features)

    @property
    def ok(self) -> bool:
        return not self.problems and not any(s.problems for s in self.subjects)

    def all_problems(self) -> list[str]:
        return self.problems + [f"sub-{s.subject:02d}: {p}" for s in self.subjects for p in s.problems]


def check_data_root(root: str | Path, features: str | Path | None = None) -> CheckReport:
    """Check ``root`` (raises DataRootError when no subject can be found at all)."""
    layout = find_layout(root)
    report = CheckReport(root=layout.root, eeg_dir=layout.eeg_dir)
    images = _check_concepts(layout, report)
    _check_features(features, layout, images, report)
    reference: EEGHeader | None = None
    for subject in sorted(layout.subjects):
        files = layout.subjects[subject]
        sub = SubjectReport(subject)
        report.subjects.append(sub)
        headers = {}
        for partition, path in (("train", files.train), ("test", files.test)):
            header = _check_file(path, sub)
            if header is None:
                continue
            headers[partition] = header
            setattr(sub, f"{partition}_shape", header.shape)
            expected = None if images is None else len(images.train_images if partition == "train"
                                                       else images.test_images)
            if expected is not None and header.shape[0] != expected:
                sub.problems.append(f"{path.name} has {header.shape[0]} {partition} images, {images.source.name} "
                                    f"lists {expected}")
        if not headers:
            continue
        first = headers.get("train") or headers["test"]
        sub.format, sub.n_channels, sub.sfreq = first.format, first.shape[2], first.sfreq
        sub.span = (float(first.times[0]), float(first.times[-1]))
        if len(headers) == 2:
            _compare(headers["train"], headers["test"], sub, "test file vs training file")
        if reference is None:
            reference = first
        else:
            _compare(reference, first, sub, f"vs sub-{report.subjects[0].subject:02d}")
    return report


def _check_concepts(layout, report: CheckReport) -> ImageList | None:
    try:
        images = find_image_list(layout)
        report.images_per_train_concept = images.images_per_concept("train")
    except DataFormatError as exc:
        report.problems.append(str(exc))
        if isinstance(exc, DataRootError):  # no concept list at all, as opposed to a broken one
            report.missing.append(str(exc))
        return None
    report.concept_source = images.source
    report.n_train_concepts, report.n_test_concepts = len(images.train_concepts), len(images.test_concepts)
    try:  # a problem of its own: the image counts can still be checked against this list
        refuse_overlapping_concepts([concept_name(c) for c in images.train_concepts],
                                    [concept_name(c) for c in images.test_concepts], images.source)
    except DataFormatError as exc:
        report.problems.append(str(exc))
    return images


def _check_features(features, layout, images: ImageList | None, report: CheckReport) -> None:
    path = Path(features) if features is not None else find_feature_file(layout.search_dirs())
    if path is None:
        report.problems.append(f"no feature file in {layout.root} (features.npz, <model>_features_train.pt or "
                               f"clip_feature_maps_training.npy); pass --features or extract features")
        report.missing.append(report.problems[-1])
        return
    report.features = path
    for partition in ("train", "test"):
        try:
            kind, files = feature_files(path, partition)  # type: ignore[arg-type]
            feats = load_partition_any(path, partition)  # type: ignore[arg-type]
        except FeatureFileError as exc:
            report.problems.append(str(exc))
            continue
        rows = {"image": feats.image.shape, "text": getattr(feats.text, "shape", None),
                "centroid": getattr(feats.centroid, "shape", None)}
        report.feature_rows[partition] = ", ".join(f"{k} {v[0]}×{v[1]}" for k, v in rows.items() if v is not None)
        if images is None:
            continue
        n_images = len(images.train_images if partition == "train" else images.test_images)
        n_concepts = len(images.train_concepts if partition == "train" else images.test_concepts)
        if rows["image"][0] != n_images:
            report.problems.append(f"{files[0]}: {rows['image'][0]} {partition} image feature rows, but the EEG has "
                                   f"{n_images} {partition} images")
        for key in ("text", "centroid"):
            if rows[key] is not None and rows[key][0] != n_concepts:
                report.problems.append(f"{files[-1]}: {rows[key][0]} {partition} {key} rows, but there are "
                                       f"{n_concepts} {partition} concepts")


def _check_file(path: Path, sub: SubjectReport) -> EEGHeader | None:
    try:
        return cached_eeg(path).header
    except NonFiniteDataError as exc:
        sub.nonfinite += exc.count
        sub.problems.append(str(exc))
        return peek_header(path)
    except DataFormatError as exc:
        sub.problems.append(str(exc))
        return None


def _compare(a: EEGHeader, b: EEGHeader, sub: SubjectReport, what: str) -> None:
    if a.ch_names != b.ch_names:
        sub.problems.append(f"{b.path.name}: channels differ ({what}): {len(b.ch_names)} vs {len(a.ch_names)}, "
                            f"first difference at {next((x, y) for x, y in zip(a.ch_names + [''], b.ch_names + ['']) if x != y)}")
    if abs(a.sfreq - b.sfreq) > 1e-6 * a.sfreq or a.shape[3] != b.shape[3]:
        sub.problems.append(f"{b.path.name}: {b.sfreq:g} Hz × {b.shape[3]} samples, but {a.sfreq:g} Hz × "
                            f"{a.shape[3]} ({what})")
