"""THINGS image folders in label order, concept names and text prompts.

Label order is the one every reference code base relies on: walk the concept folders sorted by name and, inside
each, the image files sorted by name. EEG training row r then belongs to training concept r // images_per_concept.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bench.data.errors import DataFormatError
from bench.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
#: (training, test) folder names: the OSF image set, then UBP/NeuroBridge's resized copy.
FOLDER_NAMES = (("training_images", "test_images"), ("train_images", "test_images"))


class ImageFolderError(UserError, ValueError):
    """An image folder is missing, empty or not in the THINGS layout."""


@dataclass(frozen=True)
class ThingsImages:
    root: Path
    train_concepts: list[str]
    train_images: list[Path]
    test_concepts: list[str]
    test_images: list[Path]

    @property
    def images_per_train_concept(self) -> int:
        return len(self.train_images) // max(len(self.train_concepts), 1)

    def list_hash(self) -> str:
        """A hash of the relative image paths in order: two extractions agree on rows iff their lists agree."""
        h = hashlib.sha256()
        for p in (*self.train_images, *self.test_images):
            h.update(str(p.relative_to(self.root)).encode() + b"\n")
        return h.hexdigest()[:16]


def concept_name(folder_name: str) -> str:
    """``00001_aircraft_carrier`` → ``aircraft_carrier`` (the numeric prefix dropped, underscores kept)."""
    prefix, sep, rest = folder_name.partition("_")
    return rest if sep and prefix.isdigit() else folder_name


def refuse_overlapping_concepts(train: list[str], test: list[str], source: str | Path) -> None:
    """Refuse a concept list whose test concepts include training concepts (names as ``concept_name`` gives them).

    Zero-shot scores are only meaningful on concepts the model never trained on; THINGS-EEG's 200 test concepts are
    disjoint from its 1654 training concepts by design, so an overlap means an edited or mixed-up image list.
    """
    seen = set(train)
    overlap = [c for c in test if c in seen]
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise DataFormatError(f"{source}: {len(overlap)} of {len(test)} test concepts are also training concepts "
                              f"({shown}); expected disjoint concepts, as in THINGS-EEG (zero-shot tests need "
                              f"concepts the model never trained on)")


def make_prompts(concepts: list[str], template: str = "This picture is {concept}",
                 underscores_to_spaces: bool = False) -> list[str]:
    if "{concept}" not in template:
        raise ValueError(f"prompt template {template!r} must contain '{{concept}}'")
    return [template.format(concept=c.replace("_", " ") if underscores_to_spaces else c) for c in concepts]


def _scan_partition(folder: Path) -> tuple[list[str], list[Path], set[int]]:
    if not folder.is_dir():
        raise ImageFolderError(f"image folder {folder} does not exist")
    concept_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not concept_dirs:
        raise ImageFolderError(f"{folder} holds no concept folders (expected e.g. 00001_aardvark/)")
    concepts, images, counts = [], [], set()
    for d in concept_dirs:
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageFolderError(f"concept folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        concepts.append(concept_name(d.name))
        images.extend(files)
        counts.add(len(files))
    return concepts, images, counts


def scan_things_images(images_root: str | Path) -> ThingsImages:
    """Walk ``training_images/`` (or ``train_images/``) and ``test_images/`` under ``images_root`` in label order."""
    root = Path(images_root)
    if not root.is_dir():
        raise ImageFolderError(f"image root {root} does not exist")
    for train_name, test_name in FOLDER_NAMES:
        if (root / train_name).is_dir():
            train_c, train_i, counts = _scan_partition(root / train_name)
            test_c, test_i, _ = _scan_partition(root / test_name)
            if len(counts) != 1:
                raise ImageFolderError(
                    f"{root / train_name}: concepts hold different numbers of images ({sorted(counts)}); "
                    f"EEG row r belongs to concept r // images_per_concept, so every concept needs the same count")
            return ThingsImages(root, train_c, train_i, test_c, test_i)
    raise ImageFolderError(
        f"{root} has no training_images/ (or train_images/) folder; expected the THINGS layout "
        f"training_images/00001_aardvark/aardvark_01b.jpg and test_images/00001_aircraft_carrier/...")
