"""Where a model's weights come from, and their sha256.

Weights come from ``--weights FILE``, from what already sits in the local Hugging Face hub cache or a library's URL
download folder, or are seeded random weights (``--random-init``, recorded as ``weights: "random-init"``). When none
of these has them and the machine may go online, the family's library downloads them into its usual cache
(open_clip's ``download_pretrained``, huggingface_hub's ``hf_hub_download`` for timm), as any open_clip or timm user
expects. Offline (``--offline``, or ``HF_HUB_OFFLINE=1`` as on clusters without network) nothing is downloaded:
:class:`FeatureExtractionError` at once, before a model is built, saying where we looked and how to populate the
cache elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.extract.errors import FeatureExtractionError
from bench.io import atomic_write_text
from bench.paths import cache_dir

RANDOM_INIT = "random-init"
RANDOM_INIT_SEED = 0


def sha256_file(path: str | Path) -> str:
    """The file's sha256, remembered by (path, size, mtime) in the cache dir: a 4 GB checkpoint is read once."""
    path = Path(path).resolve()
    st = path.stat()
    memo_file = cache_dir() / "weights-sha256.json"
    key = str(path)
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        atomic_write_text(memo_file, json.dumps(memo, indent=0, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs rehashing next time
    return digest


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_hf_file(repo_id: str, filenames: list[str]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache  # reads the cache folder only, never the network

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_hub_cache())
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


@dataclass(frozen=True)
class Weights:
    """Where a model's weights come from: ``path`` None means seeded random initialisation."""

    path: Path | None
    source: str  # "--weights", "hf-cache:<repo>", "url-cache", "random-init"

    @property
    def digest(self) -> str:
        return RANDOM_INIT if self.path is None else sha256_file(self.path)


def resolve_weights(weights_arg: Path | None, random_init: bool, find_cached: Callable[[], Weights]) -> Weights:
    """``--random-init``, else ``--weights FILE`` (which must exist), else what ``find_cached`` finds offline."""
    if random_init:
        return Weights(None, RANDOM_INIT)
    if weights_arg is not None:
        if not weights_arg.is_file():
            raise FeatureExtractionError(f"weights file {weights_arg} does not exist")
        return Weights(weights_arg, "--weights")
    return find_cached()


def find_local_weights(hf_repo: str | None, hf_names: list[str],
                       url_file: Path | None) -> tuple[Weights | None, list[str]]:
    """A model family's published weights if a download left them here: (found or None, the places looked in).

    First the Hugging Face hub cache (``hf_repo``, the first of ``hf_names`` present), then ``url_file``, where the
    family's library keeps URL downloads.
    """
    looked = []
    if hf_repo:
        found = _cached_hf_file(hf_repo, hf_names)
        if found:
            return Weights(found, f"hf-cache:{hf_repo}"), looked
        looked.append(f"{hf_repo}/{'|'.join(hf_names)} under {hf_hub_cache()}")
    if url_file is not None:
        if url_file.is_file():
            return Weights(url_file, "url-cache"), looked
        looked.append(str(url_file))
    return None, looked


def offline_mode(offline_flag: bool) -> bool:
    """``--offline``, or ``HF_HUB_OFFLINE`` set as huggingface_hub reads it (1/true/yes/on)."""
    return offline_flag or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_weights(model: str, where: str, download: Callable[[], str]) -> Weights:
    """Let the family's library fetch the weights into its usual cache; a failure names the model and the place."""
    try:
        path = download()
    except Exception as exc:  # the libraries raise httpx, urllib, OSError and hub errors alike
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise FeatureExtractionError(
            f"could not download the weights of {model} from {where} ({reason}); check the connection (HF_ENDPOINT "
            f"and proxies apply), or pass --weights FILE, or --offline to use the local cache only") from exc
    if not path or not os.path.isfile(path):
        raise FeatureExtractionError(f"downloading the weights of {model} from {where} gave no file ({path!r})")
    return Weights(Path(path), f"downloaded:{where}")


def no_weights_message(model: str, looked_in: list[str], populate: str) -> str:
    return (f"no weights for {model}: not found in the local cache (looked for {'; '.join(looked_in) or 'nothing'}) "
            f"and bench features does not download offline (--offline or HF_HUB_OFFLINE=1). Run it without "
            f"--offline and with HF_HUB_OFFLINE unset on a machine with internet, or provide them with "
            f"--weights path/to/checkpoint "
            f"(e.g. open_clip_pytorch_model.bin or model.safetensors), or populate the cache on a machine with "
            f"internet ({populate}) and copy it here (HF_HOME / HF_HUB_CACHE select where it is read), "
            f"or pass --random-init for tests and smoke runs")
