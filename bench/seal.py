"""The test seal: while a method is built, trained or selected, nothing in this process can load the test partition.

Every loader of test data (``ThingsEEG.load_test``/``test_features``, the EEG cache for a subject's test file, the
feature readers for the ``test`` partition, ``SealedTest.open``) calls :func:`guard_test_read`. Inside
:func:`sealed` that call raises :class:`SealError` and is remembered, so a method that catches the error and goes on
is still caught: the runner calls :func:`check_unbroken` before it opens the test partition for the evaluator.

Threat model: the seal stops accidental leaks and peeking through the harness's own objects and functions (a method
that walks the call stack to the split, the dataset or the loaders). A plugin that opens the files on its own with
numpy is outside it; that is why a record carries the fingerprint of the method's code (plugin files included).
The state is per process: every run (bench train, a Ray trial, a DDP worker) seals its own process.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterable, Iterator

from bench.errors import UserError

_lock = threading.Lock()
_phase: str | None = None            # what is sealed, e.g. "nice intra sub-01 seed 0 is being built and trained"
_attempts: list[str] = []            # test reads refused inside the current sealed phase
_test_files: set[Path] = set()       # EEG files that hold a test partition (registered when a dataset opens)


class SealError(UserError, RuntimeError):
    """Something tried to read the test partition before training and model selection were over."""


def mark_test_files(paths: Iterable[str | Path]) -> None:
    """Register files that hold test EEG, so that the low-level EEG cache refuses them too while sealed."""
    with _lock:
        _test_files.update(Path(p).resolve() for p in paths)


def is_test_file(path: str | Path) -> bool:
    return Path(path).resolve() in _test_files


def guard_test_read(what: str) -> None:
    """Refuse (and remember) a read of test data while a run is sealed; no-op otherwise."""
    with _lock:
        if _phase is None:
            return
        message = (f"{what}: the test partition is sealed while {_phase}; test EEG and test features are opened "
                   f"by the evaluator only, after training and model selection")
        _attempts.append(message)
    raise SealError(message)


def guard_path(path: str | Path, what: str) -> None:
    """:func:`guard_test_read` for a low-level read of ``path`` when it is a registered test file."""
    if _phase is not None and is_test_file(path):
        guard_test_read(f"{what} {path}")


@contextlib.contextmanager
def sealed(phase: str) -> Iterator[None]:
    """Seal the test partition for the duration of the block (method construction, training, selection)."""
    global _phase
    with _lock:
        if _phase is not None:
            raise RuntimeError(f"the test partition is already sealed ({_phase})")
        _phase = phase
        _attempts.clear()
    try:
        yield
    finally:
        with _lock:
            _phase = None


def check_unbroken(label: str) -> None:
    """After the sealed phase: fail the run if anything tried to read the test partition during it (even if the
    method caught the refusal and carried on)."""
    with _lock:
        attempts = list(_attempts)
        _attempts.clear()
    if attempts:
        more = f" (and {len(attempts) - 1} more attempt(s))" if len(attempts) > 1 else ""
        raise SealError(f"{label}: the test partition was accessed before evaluation: {attempts[0]}{more}")
