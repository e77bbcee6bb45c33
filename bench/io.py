"""Atomic writes: every file the harness produces appears whole or not at all, and a write the operating system
refuses (read-only folder, disk full, permission denied) is a :class:`StorageError` naming the file, which the CLI
prints as one line instead of a traceback."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from bench.errors import UserError

#: errors that say the disk or folder refused a write, whatever file object raised them: ``fh.write`` inside a
#: ``with atomic_path(...)`` body raises ENOSPC without a file name, and it is still the target that could not be written
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM})


class StorageError(UserError, OSError):
    """The operating system refused to read or write a file of the harness: the message names the path and the OS
    reason. An OSError still, so code that handles OSError keeps working; a UserError, so the CLI prints one line."""

    def __init__(self, message: str, cause: OSError | None = None):
        super().__init__(message)
        self.message = message
        if cause is not None:
            self.errno = cause.errno

    def __str__(self) -> str:
        return self.message


def os_reason(exc: OSError) -> str:
    """The OS's words for an error ("No space left on device"), without the Python repr around them."""
    return exc.strerror or str(exc) or type(exc).__name__


def storage_error(path: str | Path, exc: OSError, action: str = "write") -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    return StorageError(f"cannot {action} {path}: {os_reason(exc)}", exc)


def _refused_write(exc: OSError, paths: tuple[Path, ...]) -> bool:
    """Whether an OSError raised while writing one of ``paths`` is the write being refused (not, say, the caller
    failing to read an input inside the ``with`` body, which keeps its own message)."""
    named = exc.filename is not None and Path(exc.filename) in paths
    return named or (exc.filename is None and exc.errno in WRITE_ERRNOS)


def make_folder(folder: Path) -> None:
    """``mkdir -p``; where a file stands in the way, the error says "Not a directory" (mkdir says "File exists")."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from exc


def temp_beside(path: Path, suffix: str) -> Path:
    """An empty temporary file in ``path``'s folder (created with it), readable as the umask allows."""
    try:
        make_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make shared reports and records private
    except OSError as exc:
        raise storage_error(path, exc) from exc
    return Path(tmp)


def stage(path: str | Path, write: Callable[[Path], None], suffix: str | None = None) -> Path:
    """Write a temporary file beside ``path`` with ``write(tmp)`` and return it, not yet renamed: the caller decides
    when it becomes ``path`` (``os.replace``). On any error the temporary file is removed; a refused write is a
    :class:`StorageError` naming ``path``."""
    path = Path(path)
    tmp = temp_beside(path, suffix if suffix is not None else path.suffix)
    with _discarded_on_error(tmp, path):
        write(tmp)
    return tmp


@contextlib.contextmanager
def _discarded_on_error(tmp: Path, path: Path) -> Iterator[None]:
    """On any error inside, remove ``tmp``; a refused write (disk full, read-only, permission) becomes a
    :class:`StorageError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if _refused_write(exc, (tmp, path)):
            raise storage_error(path, exc) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    ``suffix`` keeps the extension of the temporary file (``np.save`` and friends append one otherwise).
    """
    path = Path(path)
    tmp_path = temp_beside(path, suffix if suffix is not None else path.suffix)
    with _discarded_on_error(tmp_path, path):
        yield tmp_path
        os.replace(tmp_path, path)


def probe_writable(folder: str | Path, what: str = "folder") -> None:
    """Create and remove a file in ``folder`` (or, while it does not exist yet, in its nearest existing ancestor, so a
    refused command leaves no empty results folder behind): a folder that cannot take a file (read-only, full quota,
    no permission) is a :class:`StorageError` now, before hours of work are spent on results that could not be saved."""
    folder = Path(folder).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        fd, tmp = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        try:
            os.write(fd, b"ok\n")  # creating may succeed on a full disk where writing a byte does not
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise StorageError(f"{what} {folder} is not writable: {os_reason(exc)}", exc) from exc


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Put ``source`` at ``target`` without copying bytes where the file system allows: only for files that are
    never rewritten in place (checkpoints are renamed into place whole)."""
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)
