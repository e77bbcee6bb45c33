"""Which image transform ``bench features`` applies: the model's evaluation transform, or its training one, seeded.

``eval`` (the default) is the model's deterministic evaluation transform (resize, centre crop, normalise).
``train`` is the backend's *training* transform (open_clip's ``preprocess_train``, a RandomResizedCrop; timm's
``create_transform(is_training=True)``), which is how ATM cached its image features: one random crop per image,
made once. Each image's randomness here is a function of ``(seed, partition, image index)`` only (:func:`image_seed`),
never of the batch, the worker thread that loaded it or what ran before, so a re-run or a resumed extraction gives
identical features.

Transforms draw from the process-wide generators (torchvision and open_clip from torch's CPU generator, timm also
from Python's ``random``), which take no seed argument. So each image is transformed under a lock with those
generators, and numpy's, seeded for it, and their previous states are put back afterwards: the loader threads
cannot interleave draws, and the extraction leaves the process's random state as it found it. The lock serialises
only the transform; decoding the image stays parallel.
"""
from __future__ import annotations

import random
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from bench.extract.errors import FeatureExtractionError

TRANSFORMS = ("eval", "train")
#: the partitions' places in the seed (so training image 0 and test image 0 get different crops)
PARTITION_SEED = {"train": 0, "test": 1}

#: ``(PIL image, partition, index) → tensor``: what the loader threads call for every image
ImageTransform = Callable[[Any, str, int], Any]


def image_seed(seed: int, part: str, index: int) -> int:
    """The 32-bit seed of one image: numpy's SeedSequence of ``[seed, partition (train 0, test 1), index]``."""
    return int(np.random.SeedSequence([seed, PARTITION_SEED[part], index]).generate_state(1)[0])


_RNG_LOCK = threading.Lock()


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """torch's CPU generator, Python's ``random`` and numpy's global RNG seeded with ``seed``, restored on exit."""
    import torch

    with _RNG_LOCK:
        states = torch.get_rng_state(), random.getstate(), np.random.get_state()
        # the CPU generator only: torch.manual_seed would also reseed (and initialise) every CUDA device
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])


def image_transform(ex: Any, mode: str, seed: int | None) -> tuple[Callable, ImageTransform]:
    """(the transform object, recorded in the metadata; the per-image callable the loader applies).

    Raises :class:`FeatureExtractionError` when ``mode`` is ``train`` and the model family has no training
    transform (``Extractor.train_transform`` is None).
    """
    if mode == "eval":
        transform = ex.transform
        return transform, lambda img, part, index: transform(img)
    transform = getattr(ex, "train_transform", None)
    if transform is None:
        raise FeatureExtractionError(
            f"{ex.model_id} has no training transform, so --transform train cannot apply; use --transform eval "
            f"(open_clip and timm models have one)")

    def seeded(img: Any, part: str, index: int) -> Any:
        with seeded_global_rngs(image_seed(int(seed or 0), part, index)):
            return transform(img)
    return transform, seeded
