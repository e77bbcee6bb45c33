"""`bench data download`: plan, fetch, verify and lay out one source's files under ``--to``.

1. plan: the provider's listing (sizes, hashes) filtered by the source's rules, subjects and partitions; what is
   already installed (recorded in ``<to>/.bench-download/<source>/manifest.json`` with its provider hash and size, and
   still on disk with the recorded size and modification time) is skipped; bytes already in ``.part`` files count as
   fetched; free disk is compared with what remains (archives count twice: the download and its unpacked copy).
2. fetch each file into ``<to>/.bench-download/<source>/`` (OSF: ``.part`` + HTTP Range; Hugging Face: its own
   ``.incomplete`` resume), verify it against the provider's hash (sha256, md5, or git's blob id), fetch it again once
   on a mismatch, then fail naming the file.
3. install: a zip is unpacked into its folder (:mod:`bench.data.unpack`), any other file renamed into place; the
   manifest is rewritten after each file, so an interrupted download continues with the next run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.data.errors import DownloadError
from bench.data.http_fetch import Interrupted, file_hash, free_bytes
from bench.data.providers import fetch, list_files
from bench.data.sources import PARTITIONS, Source, Wanted, get_source
from bench.data.unpack import unpack_zip
from bench.io import atomic_write_text

STAGING = ".bench-download"
RETRIES = 3  # per file and run, each continuing after the bytes already fetched
MARGIN = 1 << 28  # 256 MiB kept free beyond the estimate


@dataclass
class Plan:
    source: Source
    to: Path
    wanted: list[Wanted]
    installed: list[Wanted] = field(default_factory=list)
    partial: dict[str, int] = field(default_factory=dict)  # remote path → bytes already in its .part file
    free: int = 0

    @property
    def staging(self) -> Path:
        return self.to / STAGING / self.source.name

    @property
    def pending(self) -> list[Wanted]:
        done = {id(w) for w in self.installed}
        return [w for w in self.wanted if id(w) not in done]

    @property
    def bytes_total(self) -> int:
        return sum(w.remote.size for w in self.wanted)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(w.remote.size - self.partial.get(w.remote.path, 0) for w in self.pending)

    @property
    def bytes_needed(self) -> int:
        """Disk the rest needs: what is still to fetch, plus an unpacked copy of each archive (≈ its size: the
        published arrays barely compress), plus a margin."""
        return self.bytes_to_fetch + sum(w.remote.size for w in self.pending if w.is_archive) + MARGIN


def make_plan(source_name: str, to: Path, subjects: list[int] | None, partitions: list[str]) -> Plan:
    bad = [p for p in partitions if p not in PARTITIONS]
    if bad or not partitions:
        raise DownloadError(f"--partitions {','.join(partitions)!r}: expected train, test or train,test")
    source = get_source(source_name)
    to = Path(to).expanduser()
    if to.exists() and not to.is_dir():
        raise DownloadError(f"--to {to} exists and is not a folder")
    wanted = source.select(list_files(source, to), subjects, partitions)
    if not wanted:
        raise DownloadError(f"{source.page}: the listing has no file for subjects "
                            f"{'all' if subjects is None else subjects} and partitions {','.join(partitions)}; the "
                            f"files may have moved (update bench/data/sources.yaml) or be hosted elsewhere: open the "
                            f"page and fetch them by hand")
    plan = Plan(source, to, wanted, free=free_bytes(to))
    manifest = _read_manifest(plan)
    for w in wanted:
        if _is_installed(plan, w, manifest.get(w.remote.path)):
            plan.installed.append(w)
        elif (part := plan.staging / (w.remote.path + ".part")).is_file():
            plan.partial[w.remote.path] = min(part.stat().st_size, w.remote.size)
    return plan


def check_space(plan: Plan) -> None:
    if plan.bytes_needed > plan.free:
        raise DownloadError(
            f"not enough disk space under {plan.to}: this download needs ≈ {gb(plan.bytes_needed)} "
            f"({gb(plan.bytes_to_fetch)} to fetch, {gb(plan.bytes_needed - plan.bytes_to_fetch - MARGIN)} to unpack "
            f"archives, {gb(MARGIN)} margin) but {gb(plan.free)} is free; free some space, choose another --to, or "
            f"fewer --subjects/--partitions")


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def run_download(plan: Plan, progress: "Progress") -> list[Path]:  # noqa: F821 (rich's, created by the caller)
    """Fetch, verify and install every pending file; returns the installed targets."""
    overall = progress.add_task(f"{plan.source.name}", total=plan.bytes_to_fetch)
    manifest = _read_manifest(plan)
    out = []
    for w in plan.pending:
        task = progress.add_task(w.remote.path, total=w.remote.size, completed=plan.partial.get(w.remote.path, 0))

        def advance(n: int, task=task) -> None:
            progress.advance(task, n)
            progress.advance(overall, n)

        staged = _fetch_verified(plan, w, advance, lambda: progress.reset(task, total=w.remote.size))
        out.append(_install(plan, w, staged))
        manifest[w.remote.path] = _record(plan, w)
        atomic_write_text(plan.staging / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        progress.update(task, visible=False)
    return out


def _fetch_verified(plan: Plan, w: Wanted, advance: Callable[[int], None], restart: Callable[[], None]) -> Path:
    """The staged file after it matched the provider's hash; one fresh fetch after a mismatch, then an error."""
    expected = w.remote.best_hash()
    for attempt in (1, 2):
        staged = _fetch_retrying(plan, w, advance, force=attempt == 2)
        if expected is None:
            return staged
        got = file_hash(staged, expected[0])
        if got == expected[1]:
            return staged
        staged.unlink()
        if attempt == 1:
            restart()
    raise DownloadError(f"{w.remote.path} from {w.remote.url}: {expected[0]} {got} does not match the provider's "
                        f"{expected[1]} after fetching it twice; the file on the server or the connection corrupts "
                        f"it. Nothing was installed for it; try again later or fetch it by hand from {plan.source.page}")


def _fetch_retrying(plan: Plan, w: Wanted, advance, force: bool) -> Path:
    for attempt in range(1, RETRIES + 1):
        try:
            return fetch(plan.source, w.remote, plan.staging, plan.to, advance, force=force and attempt == 1)
        except Interrupted as exc:
            if attempt == RETRIES:
                raise DownloadError(f"{exc}; the part fetched so far is kept in {plan.staging}: run the same "
                                    f"command again to continue") from None
    raise AssertionError("unreachable")


def _install(plan: Plan, w: Wanted, staged: Path) -> Path:
    target = plan.to / w.target
    if w.is_archive:
        unpack_zip(staged, target.parent)
        staged.unlink()
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(target)
    return target


def _record(plan: Plan, w: Wanted) -> dict:
    target = plan.to / w.target
    entry = {"size": w.remote.size, "hash": list(w.remote.best_hash() or ()), "target": w.target}
    if target.is_file():
        st = target.stat()
        entry.update(target_size=st.st_size, target_mtime_ns=st.st_mtime_ns)
    return entry


def _is_installed(plan: Plan, w: Wanted, entry: dict | None) -> bool:
    """Recorded with this size and hash, and the target is still what was installed (a file: same size and mtime)."""
    if entry is None or entry.get("size") != w.remote.size or entry.get("hash") != list(w.remote.best_hash() or ()):
        return False
    target = plan.to / w.target
    if w.is_archive:
        return target.is_dir()
    if not target.is_file():
        return False
    st = target.stat()
    return st.st_size == entry.get("target_size") and st.st_mtime_ns == entry.get("target_mtime_ns")


def _read_manifest(plan: Plan) -> dict:
    path = plan.staging / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # a damaged manifest only costs fetching again


def download(source_name: str, to: Path, subjects: list[int] | None = None,
             partitions: tuple[str, ...] = PARTITIONS) -> Plan:
    """Library entry point without a console: plan, check the disk, fetch, install; returns the plan."""
    from rich.progress import Progress

    plan = make_plan(source_name, to, subjects, list(partitions))
    check_space(plan)
    with Progress(disable=True) as progress:
        run_download(plan, progress)
    return plan
