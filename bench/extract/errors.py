"""The one error of feature extraction, shared by the weight lookup, the model families and the loop."""
from __future__ import annotations

from bench.errors import UserError


class FeatureExtractionError(UserError, RuntimeError):
    """Features cannot be extracted as asked (no weights, unreadable image, bad option); the message says why."""
