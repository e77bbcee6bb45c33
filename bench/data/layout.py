"""Where things are inside a data root: the subject folders, their EEG files, and the concept list.

Accepted layouts (``ROOT`` is what ``--data-root`` names)::

    ROOT/Preprocessed_data_250Hz/sub-01/preprocessed_eeg_training.npy   ATM README (also *_whiten, preprocessed_data)
    ROOT/sub-01/preprocessed_eeg_training.npy                           NICE README: ROOT is the EEG folder itself
    ROOT/.../sub-01/train.pt, test.pt                                   UBP

Concept names come from ``image_metadata.npy`` or from the ``training_images/`` and ``test_images/`` folders
(UBP: ``train_images/``), looked for in ROOT, its image-set sub-folders, and ROOT's parent when ROOT is the EEG folder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.data.errors import DataFormatError, DataRootError
from bench.data.concepts import scan_things_images
from bench.data.formats import PARTITION_FILES, ImageList, read_image_metadata

EEG_FOLDERS = ("", "Preprocessed_data_250Hz", "Preprocessed_data_250Hz_whiten", "Preprocessed_data_250Hz_no_whiten",
               "preprocessed_data", "eeg_dataset/preprocessed_data", "Preprocessed_data")
IMAGE_FOLDERS = ("", "image_set", "images_set", "Image_set", "Image_set_Resize", "images", "stimuli")
_SUBJECT = re.compile(r"^sub-(\d+)$")


@dataclass(frozen=True)
class SubjectFiles:
    subject: int
    folder: Path
    train: Path
    test: Path


@dataclass(frozen=True)
class DataLayout:
    root: Path
    eeg_dir: Path
    subjects: dict[int, SubjectFiles]

    def subject(self, subject: int) -> SubjectFiles:
        try:
            return self.subjects[int(subject)]
        except (KeyError, ValueError, TypeError):
            found = ", ".join(map(str, sorted(self.subjects)))
            raise DataRootError(f"subject {subject!r} not found in {self.eeg_dir} (subjects found: {found})") from None

    def search_dirs(self) -> list[Path]:
        """Folders that may hold the image set and feature files: ROOT and, for the NICE layout, its parent."""
        dirs = [self.root]
        if self.eeg_dir == self.root:
            dirs.append(self.root.parent)
        return dirs


def find_layout(root: str | Path) -> DataLayout:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataRootError(f"data root {root} does not exist or is not a folder")
    found = [(root / sub, subjects) for sub in EEG_FOLDERS if (subjects := _subject_folders(root / sub))]
    if not found:
        raise DataRootError(
            f"{root}: no subject folders with EEG files; expected ROOT/sub-01/preprocessed_eeg_training.npy (or "
            f"train.pt), or the same under one of: {', '.join(f for f in EEG_FOLDERS if f)}")
    if len(found) > 1:
        raise DataRootError(f"{root}: subject folders found in several places ({', '.join(str(d) for d, _ in found)}); "
                            f"point --data-root at the one to use")
    eeg_dir, folders = found[0]
    subjects = {s: _subject_files(s, folder) for s, folder in folders.items()}
    return DataLayout(root=root, eeg_dir=eeg_dir, subjects=subjects)


def _subject_folders(parent: Path) -> dict[int, Path]:
    if not parent.is_dir():
        return {}
    out = {}
    for child in sorted(parent.iterdir()):
        match = _SUBJECT.match(child.name)
        if match and child.is_dir() and any((child / n).exists() for names in PARTITION_FILES.values() for n in names):
            out[int(match.group(1))] = child
    return out


def _subject_files(subject: int, folder: Path) -> SubjectFiles:
    paths = {}
    for partition, names in PARTITION_FILES.items():
        present = [folder / n for n in names if (folder / n).exists()]
        if not present:
            raise DataRootError(f"{folder}: no {partition} file (expected one of: {', '.join(names)})")
        if len(present) > 1:
            raise DataRootError(f"{folder}: both {' and '.join(p.name for p in present)} are present; keep one")
        paths[partition] = present[0]
    return SubjectFiles(subject, folder, paths["train"], paths["test"])


def find_image_list(layout: DataLayout) -> ImageList:
    """The concept list in label order, from image_metadata.npy (preferred: the official index) or the folders."""
    candidates = [base / sub for base in layout.search_dirs() for sub in IMAGE_FOLDERS]
    for folder in candidates:
        if (folder / "image_metadata.npy").is_file():
            return read_image_metadata(folder / "image_metadata.npy")
    for folder in candidates:
        train = next((folder / n for n in ("training_images", "train_images") if (folder / n).is_dir()), None)
        if train is not None and (folder / "test_images").is_dir():
            return scan_image_folders(folder)
    raise DataRootError(
        f"{layout.root}: no concept list; expected image_metadata.npy or training_images/ and test_images/ "
        f"(from the THINGS-EEG image set) in {layout.root} or one of its sub-folders "
        f"{', '.join(f for f in IMAGE_FOLDERS if f)}")


def scan_image_folders(images_root: Path) -> ImageList:
    """The concept list in label order from the image folders (``bench.data.concepts`` walks them)."""
    things = scan_things_images(images_root)

    def folders_and_files(images: list[Path]) -> tuple[list[str], list[str]]:
        return list(dict.fromkeys(p.parent.name for p in images)), [f"{p.parent.name}/{p.name}" for p in images]

    train_concepts, train_images = folders_and_files(things.train_images)
    test_concepts, test_images = folders_and_files(things.test_images)
    return ImageList(train_concepts, train_images, test_concepts, test_images, images_root)
