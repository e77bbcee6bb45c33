"""Whole directories that appear complete or not at all, and a cross-process lock so two workers do not build one twice."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from bench.io import current_umask


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; on success it is renamed onto ``final``, on error removed.

    If another process created ``final`` meanwhile, its copy is kept and ours is discarded (both are complete).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would make a published data root private
    try:
        yield tmp
        try:
            os.rename(tmp, final)  # replaces an empty `final`; fails if a complete one is already there
        except OSError:
            if not final.is_dir() or not any(final.iterdir()):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock held for the ``with`` block (the lock file itself is left in place, empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
