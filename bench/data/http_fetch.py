"""Plain HTTP for the OSF provider: JSON pages, and files fetched into ``<file>.part`` with Range resume.

Every failure becomes a :class:`DownloadError` naming the URL: unreachable (with how to fetch by hand), 404 (the
source table may be out of date), other HTTP statuses, and a connection that ends early (the ``.part`` file stays, so
the next attempt continues where this one stopped: no byte is fetched twice).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from bench.data.errors import DownloadError

TIMEOUT_S = 60
BLOCK = 1 << 20
USER_AGENT = "thingsbench-data-download"


class Interrupted(DownloadError):
    """The connection ended before the whole file arrived; the ``.part`` file keeps what did."""


def unreachable(url: str, reason: object, by_hand: str) -> DownloadError:
    return DownloadError(f"cannot reach {url} ({reason}); check the connection or proxy, or fetch by hand: {by_hand}")


def _open(url: str, by_hand: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise DownloadError(f"{url}: 404 Not Found; the file or listing has moved or was removed. Update its entry "
                                f"in bench/data/sources.yaml, or fetch by hand: {by_hand}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; try again later, or fetch by hand: {by_hand}") \
            from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as exc:
        raise unreachable(url, getattr(exc, "reason", exc), by_hand) from None


def get_json(url: str, by_hand: str) -> dict:
    with _open(url, by_hand, {"Accept": "application/json"}) as response:
        body = response.read()
    try:
        return json.loads(body)
    except ValueError:
        raise DownloadError(f"{url}: expected JSON, got {body[:80]!r}; fetch by hand: {by_hand}") from None


def fetch_to_part(url: str, part: Path, size: int, by_hand: str, advance: Callable[[int], None]) -> None:
    """Fetch ``url`` into ``part`` until it holds ``size`` bytes, continuing after the bytes already there."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not a prefix of this file (the provider's file changed): start again
        part.unlink()
        have = 0
    if have == size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _open(url, by_hand, headers) as response:
        if have and response.status != 206:  # the server ignored Range: it sends the whole file
            have = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab" if have else "wb") as fh:
            try:
                while block := response.read(BLOCK):
                    fh.write(block)
                    advance(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout) as exc:
                raise Interrupted(f"{url}: the connection ended after {fh.tell()} of {size} bytes ({exc!r})") \
                    from None
    got = part.stat().st_size
    if got != size:
        raise Interrupted(f"{url}: received {got} of {size} bytes")


def file_hash(path: Path, kind: str) -> str:
    """``sha256`` or ``md5`` of the file, or ``git-sha1`` (git's blob id, which Hugging Face lists for small files)."""
    if kind == "git-sha1":
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        h = hashlib.new(kind)
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK * 4):
            h.update(block)
    return h.hexdigest()


def free_bytes(folder: Path) -> int:
    """Free space where ``folder`` is (or will be created)."""
    import shutil

    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    return shutil.disk_usage(existing).free


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
