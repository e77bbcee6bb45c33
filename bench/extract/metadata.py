"""A feature file's metadata, and the part of it (its identity) that decides cache hits and resume.

The output's metadata is its cache key: rerunning with the same :data:`IDENTITY_KEYS` is a no-op, different ones
recompute, and a partial run is resumed only under the same identity.
"""
from __future__ import annotations

from pathlib import Path

from bench.data.concepts import ThingsImages
from bench.extract.models import Extractor
from bench.extract.weights import RANDOM_INIT_SEED, Weights

#: The metadata that decides whether an existing output (or a partial run) holds the requested features.
IDENTITY_KEYS = ("model", "pretrained", "weights", "layer", "pool", "transform", "transform_mode", "transform_seed",
                 "image_list_hash", "prompt_template", "underscores_to_spaces", "text", "dtype")
#: keys added after files were written without them, with the value those files implicitly have: an identity leaves
#: them out at that value, so earlier files (and partial runs) of the evaluation transform still match
LATER_KEYS = {"transform_mode": "eval", "transform_seed": None}


def _identity_values(meta: dict) -> dict:
    return {k: meta.get(k, LATER_KEYS.get(k)) for k in IDENTITY_KEYS}


def identity(meta: dict) -> dict:
    return {k: v for k, v in _identity_values(meta).items() if k not in LATER_KEYS or v != LATER_KEYS[k]}


def describe_difference(old: dict, new: dict) -> str:
    """The identity keys that differ, old → new, for the message that says why features are recomputed."""
    old, new = _identity_values(old), _identity_values(new)
    keys = [k for k in IDENTITY_KEYS if old[k] != new[k]]
    return ", ".join(f"{k}: {str(old[k])[:60]!r} → {str(new[k])[:60]!r}" for k in keys)


def describe(ex: Extractor, weights: Weights, things: ThingsImages, images: str | Path, *, layer: int | None,
             pool: str, text: bool, text_note: str, prompt_template: str, underscores_to_spaces: bool, dtype: str,
             dim: int | None, transform: object, transform_mode: str = "eval", transform_seed: int | None = None
             ) -> dict:
    """The metadata stored with the features (``dim`` is corrected from the real output when they are written).

    ``transform`` is the transform object applied (its repr is stored); ``transform_mode`` and, for ``train``,
    ``transform_seed`` say how (:mod:`bench.extract.transforms`).
    """
    meta = {
        "model": ex.model_id, "family": ex.family, "model_name": ex.name, "pretrained": ex.resolved_pretrained(),
        "weights": weights.digest,
        "weights_source": weights.source if weights.path is None else f"{weights.source}: {weights.path}",
        "layer": layer, "num_layers": ex.num_layers, "pool": pool,
        "intermediate_norm": False if layer is not None else None,
        "transform": repr(transform), "transform_mode": transform_mode, "image_list_hash": things.list_hash(),
        "images_root": str(Path(images).resolve()),
        "n_train_images": len(things.train_images), "n_test_images": len(things.test_images),
        "n_train_concepts": len(things.train_concepts), "n_test_concepts": len(things.test_concepts),
        "prompt_template": prompt_template, "underscores_to_spaces": underscores_to_spaces,
        "text": text, "text_note": text_note, "dtype": dtype, "normalized": True, "dim": dim,
        "created_by": "bench features",
    }
    if transform_mode != "eval":
        meta["transform_seed"] = transform_seed  # the crops' seed; "seed" below is the random weights'
    if weights.path is None:
        meta["seed"] = RANDOM_INIT_SEED
    return meta
