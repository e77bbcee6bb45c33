"""The data layer's exceptions, kept free of heavy imports so the CLI can register them at start-up.

Every message names the file (or folder), what was expected and what was found: the CLI prints it as the one line
the user sees.
"""
from __future__ import annotations

from bench.errors import UserError


class DataFormatError(UserError, ValueError):
    """An EEG or metadata file is missing, malformed or inconsistent with the rest of the data root."""


class UnsafePickleError(DataFormatError):
    """A pickle names a global outside the allow-list; it is refused before anything in it runs."""


class NonFiniteDataError(DataFormatError):
    """An EEG array holds NaN or Inf values; ``count`` says how many."""

    def __init__(self, message: str, count: int):
        super().__init__(message)
        self.count = count


class DataRootError(DataFormatError):
    """A data root is laid out in a way no loader recognises (no subject folders, a missing subject, ...)."""


class FeatureFileError(UserError, ValueError):
    """A feature file is missing, malformed or inconsistent; the message names the file."""


class DownloadError(UserError, RuntimeError):
    """A download cannot start or finish: unreachable host, missing file, hash mismatch, not enough disk. The message
    names the URL or file and, where the network is the problem, how to fetch it by hand."""
