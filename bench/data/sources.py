"""The download sources of ``bench data download``: read from ``sources.yaml`` (package data) and checked at load.

A source lists files through its provider (OSF API or Hugging Face); its rules say which listed files are needed for a
choice of subjects and partitions, and where each goes under the download folder.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable

import yaml

from bench.data.errors import DownloadError

PROVIDERS = ("osf", "hf")
PARTITIONS = ("train", "test")
OSF_API_DEFAULT = "https://api.osf.io/v2"
_TEXT_KEYS = ("page", "title", "layout", "size", "license", "citation", "verified", "unverified")


@dataclass(frozen=True)
class Rule:
    match: re.Pattern
    partition: str | None = None
    into: str = ""


@dataclass(frozen=True)
class RemoteFile:
    """One file as the provider lists it: path relative to the storage root, size, hashes, download URL."""

    path: str
    size: int
    hashes: dict[str, str] = field(default_factory=dict)  # {"sha256": hex} or {"md5": hex} or {"git-sha1": hex}
    url: str = ""

    def best_hash(self) -> tuple[str, str] | None:
        for kind in ("sha256", "md5", "git-sha1"):
            if self.hashes.get(kind):
                return kind, self.hashes[kind].lower()
        return None


@dataclass(frozen=True)
class Wanted:
    """A listed file that a download needs, and where it goes (``into``, relative to ``--to``)."""

    remote: RemoteFile
    into: str
    subject: int | None
    partition: str | None

    @property
    def is_archive(self) -> bool:
        return self.remote.path.lower().endswith(".zip")

    @property
    def target(self) -> str:
        """Where the file (or, for an archive, the folder it unpacks to) lands, relative to ``--to``."""
        name = self.remote.path.rsplit("/", 1)[-1]
        if self.is_archive:
            return f"{self.into}/{name[:-4]}".lstrip("/")
        if self.into:
            return f"{self.into}/{name}"
        return self.remote.path  # hf without `into`: the repository's own layout


@dataclass(frozen=True)
class Source:
    name: str
    provider: str
    node: str | None
    repo: str | None
    rules: tuple[Rule, ...]
    text: dict[str, str]

    @property
    def page(self) -> str:
        return self.text["page"]

    def select(self, files: Iterable[RemoteFile], subjects: list[int] | None,
               partitions: list[str]) -> list[Wanted]:
        """The listed files these subjects and partitions need, in listing order."""
        out = []
        for remote in files:
            rule, found = next(((r, m) for r in self.rules if (m := r.match.search(remote.path))), (None, None))
            if rule is None:
                continue
            subject = int(found.group("subject")) if "subject" in found.re.groupindex else None
            if subject is not None and subjects is not None and subject not in subjects:
                continue
            if rule.partition is not None and rule.partition not in partitions:
                continue
            out.append(Wanted(remote, rule.into, subject, rule.partition))
        return out


def osf_api() -> str:
    """The OSF API base URL: ``BENCH_OSF_API`` (tests point it at a loopback server) or the public one."""
    return (os.environ.get("BENCH_OSF_API") or OSF_API_DEFAULT).rstrip("/")


@functools.lru_cache(maxsize=1)
def load_sources() -> dict[str, Source]:
    text = resources.files("bench.data").joinpath("sources.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)["sources"]
    return {name: _source(name, entry) for name, entry in raw.items()}


def get_source(name: str) -> Source:
    sources = load_sources()
    if name not in sources:
        raise DownloadError(f"unknown source {name!r}; choose one of: {', '.join(sources)} (bench data list-sources)")
    return sources[name]


def _source(name: str, entry: dict) -> Source:
    where = f"bench/data/sources.yaml, source {name!r}"
    provider = entry.get("provider")
    if provider not in PROVIDERS:
        raise DownloadError(f"{where}: provider must be one of {', '.join(PROVIDERS)}, found {provider!r}")
    key = "node" if provider == "osf" else "repo"
    if not entry.get(key):
        raise DownloadError(f"{where}: provider {provider} needs `{key}`")
    missing = [k for k in _TEXT_KEYS if k not in entry]
    if missing:
        raise DownloadError(f"{where}: missing {', '.join(missing)}")
    rules = []
    for i, r in enumerate(entry.get("files") or []):
        if r.get("partition") not in (None, *PARTITIONS):
            raise DownloadError(f"{where}, rule {i + 1}: partition must be train or test, found {r['partition']!r}")
        if provider == "osf" and not r.get("into"):
            raise DownloadError(f"{where}, rule {i + 1}: OSF files need `into` (the folder under --to)")
        rules.append(Rule(re.compile(r["match"]), r.get("partition"), str(r.get("into") or "").strip("/")))
    if not rules:
        raise DownloadError(f"{where}: no `files` rules")
    return Source(name, provider, entry.get("node"), entry.get("repo"), tuple(rules),
                  {k: " ".join(str(entry[k]).split()) for k in _TEXT_KEYS})
