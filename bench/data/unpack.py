"""Unpack a downloaded zip archive into the layout bench reads, all at once or not at all.

``sub-01.zip`` unpacks to ``<into>/sub-01/``: when the archive's entries already sit in one folder named like the
archive they are taken as they are, otherwise that folder is made for them. The archive is extracted into a temporary
folder beside the target and renamed into place; a previous copy of the target is replaced only after the new one is
complete. Entries with absolute paths or ``..`` are refused before anything is written.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from bench.data.errors import DownloadError

_SKIP = ("__MACOSX/",)


def unpack_zip(archive: Path, into: Path) -> Path:
    """Unpack ``archive`` to ``into/<archive stem>`` and return that folder."""
    stem = archive.name[: -len(".zip")]
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.filename.startswith(_SKIP)]
            _refuse_unsafe(archive, [m.filename for m in members])
            files = [m for m in members if not m.is_dir()]
            nested = bool(files) and all(PurePosixPath(m.filename).parts[0] == stem and
                                         len(PurePosixPath(m.filename).parts) > 1 for m in files)
            into.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".unpacking", dir=into))
            try:
                zf.extractall(tmp, members=members)
                _replace(tmp / stem if nested else tmp, into / stem)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a readable zip archive ({exc}); delete it and download again") from None
    return into / stem


def _refuse_unsafe(archive: Path, names: list[str]) -> None:
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name:
            raise DownloadError(f"{archive}: entry {name!r} would be written outside the target folder; refused")


def _replace(new: Path, final: Path) -> None:
    """Rename ``new`` onto ``final``; an existing ``final`` is moved aside first and removed after."""
    trash = None
    if final.exists():
        trash = final.with_name(f".{final.name}.replaced")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
    os.rename(new, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
