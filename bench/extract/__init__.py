"""`bench features`: image and text features of the THINGS images with open_clip and timm models.

One call, :func:`extract_features`, turns an image folder in the THINGS layout into a ThingsBench feature file
(:func:`bench.data.features.save_feature_set`): image rows in the loaders' label order, one text row per concept
(open_clip final layer only), all L2-normalised, stored as float16 or float32.

The package, one job per module:

* :mod:`~bench.extract.weights`: weights from ``--weights FILE`` or the local caches, never the network; their sha256.
* :mod:`~bench.extract.models`: the model families (open_clip, timm), registered in ``FEATURES``; a plugin adds one
  with ``@register_feature_extractor("name", description=...)`` on a class that follows :class:`Extractor`.
* :mod:`~bench.extract.metadata`: the output's metadata and its identity, the cache key.
* :mod:`~bench.extract.partial`: ``FILE.partial/``, one shard per finished batch, so a killed run resumes.
* :mod:`~bench.extract.transforms`: the evaluation transform, or the training one seeded per image (``--transform``).
* :mod:`~bench.extract.loop`: :func:`extract_features`, the cached, resumable loop over batches.
"""
from bench.extract.errors import FeatureExtractionError
from bench.extract.loop import DEFAULT_TEMPLATE, DTYPES, POOLS, ExtractionResult, extract_features
from bench.extract.metadata import IDENTITY_KEYS
from bench.extract.models import Extractor, OpenClipExtractor, TimmExtractor, get_extractor
from bench.extract.transforms import TRANSFORMS, image_seed
from bench.extract.weights import RANDOM_INIT, RANDOM_INIT_SEED, Weights, hf_hub_cache, sha256_file

__all__ = ["DEFAULT_TEMPLATE", "DTYPES", "IDENTITY_KEYS", "POOLS", "RANDOM_INIT", "RANDOM_INIT_SEED", "TRANSFORMS",
           "ExtractionResult", "Extractor", "FeatureExtractionError", "OpenClipExtractor", "TimmExtractor", "Weights",
           "extract_features", "get_extractor", "hf_hub_cache", "image_seed", "sha256_file"]
