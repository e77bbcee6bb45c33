"""The two providers of ``bench data download``: list a source's files (sizes, hashes) and fetch one of them.

* OSF: the API v2 listing ``<api>/nodes/<node>/files/osfstorage/`` (``data[].attributes.{name, kind, size,
  materialized_path, extra.hashes}``, ``links.download``; folders through ``relationships.files.links.related.href``;
  pages through ``links.next``), files over plain HTTP with Range resume (:mod:`bench.data.http_fetch`).
* Hugging Face: ``HfApi.list_repo_tree`` (sizes, LFS sha256, git blob ids) and ``hf_hub_download`` into a staging
  folder (huggingface_hub's own resume of ``.incomplete`` files, size checks and metadata). ``HF_ENDPOINT`` selects the
  server, as for every huggingface_hub call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from bench.data.errors import DownloadError
from bench.data.http_fetch import fetch_to_part, get_json, unreachable
from bench.data.sources import RemoteFile, Source, osf_api

MAX_PAGES = 10_000


def by_hand(source: Source, to: Path) -> str:
    return f"open {source.page} in a browser, download the files and place them as `bench data list-sources` " \
           f"shows under {to}"


def list_files(source: Source, to: Path) -> list[RemoteFile]:
    return _list_osf(source, to) if source.provider == "osf" else _list_hf(source, to)


def _list_osf(source: Source, to: Path) -> list[RemoteFile]:
    files: list[RemoteFile] = []
    pending = [f"{osf_api()}/nodes/{source.node}/files/osfstorage/"]
    pages = 0
    while pending:
        url = pending.pop(0)
        while url:
            pages += 1
            if pages > MAX_PAGES:
                raise DownloadError(f"{url}: more than {MAX_PAGES} listing pages; the listing seems to loop")
            page = get_json(url, by_hand(source, to))
            for item in page.get("data", []):
                _osf_item(item, files, pending, url)
            url = (page.get("links") or {}).get("next")
    return files


def _osf_item(item: dict, files: list[RemoteFile], folders: list[str], listing: str) -> None:
    attrs = item.get("attributes") or {}
    if attrs.get("kind") == "folder":
        href = (((item.get("relationships") or {}).get("files") or {}).get("links") or {}).get("related", {})
        href = href.get("href") if isinstance(href, dict) else href
        if href:
            folders.append(href)
        return
    try:
        path = str(attrs.get("materialized_path") or attrs["name"]).lstrip("/")
        hashes = {k: v for k, v in ((attrs.get("extra") or {}).get("hashes") or {}).items() if v}
        files.append(RemoteFile(path, int(attrs["size"]), hashes, item["links"]["download"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DownloadError(f"{listing}: a file entry lacks {exc} (name, size, links.download); the OSF API answer "
                            f"is not what this downloader knows") from None


def _list_hf(source: Source, to: Path) -> list[RemoteFile]:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import OfflineModeIsEnabled

    api = HfApi()
    url = f"{api.endpoint}/api/datasets/{source.repo}/tree/main"
    try:
        tree = list(api.list_repo_tree(source.repo, repo_type="dataset", recursive=True))
    except OfflineModeIsEnabled:
        raise DownloadError(f"HF_HUB_OFFLINE is set, so {url} is not asked; unset it (or HF_HUB_OFFLINE=0) to "
                            f"download {source.repo}") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{url}: 404 Not Found; the dataset {source.repo} has moved or was removed. Update "
                            f"bench/data/sources.yaml, or fetch by hand: {by_hand(source, to)}") from None
    except (httpx2.TransportError, HfHubHTTPError) as exc:
        raise unreachable(url, str(exc).splitlines()[0], by_hand(source, to)) from None
    out = []
    for f in tree:
        if isinstance(f, RepoFile):
            hashes = {"sha256": f.lfs.sha256} if f.lfs is not None else {"git-sha1": f.blob_id}
            out.append(RemoteFile(f.path, int(f.size), hashes, f"{api.endpoint}/datasets/{source.repo}/resolve/main/"
                                                               f"{f.path}"))
    return out


def fetch(source: Source, remote: RemoteFile, staging: Path, to: Path, advance: Callable[[int], None],
          force: bool = False) -> Path:
    """Fetch one file into ``staging`` and return its path there (complete, not yet verified)."""
    if source.provider == "osf":
        part = staging / (remote.path + ".part")
        if force:
            part.unlink(missing_ok=True)
        fetch_to_part(remote.url, part, remote.size, by_hand(source, to), advance)
        done = staging / remote.path
        part.replace(done)
        return done
    return _fetch_hf(source, remote, staging, to, advance, force)


def _fetch_hf(source: Source, remote: RemoteFile, staging: Path, to: Path, advance, force: bool) -> Path:
    import httpx2
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(source.repo, remote.path, repo_type="dataset", local_dir=staging,
                                    force_download=force))
    except EntryNotFoundError:
        raise DownloadError(f"{remote.url}: 404 Not Found; update bench/data/sources.yaml, or fetch by hand: "
                            f"{by_hand(source, to)}") from None
    except (httpx2.TransportError, HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise unreachable(remote.url, str(exc).splitlines()[0], by_hand(source, to)) from None
    advance(remote.size)
    return path
