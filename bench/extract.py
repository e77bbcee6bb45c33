"""`bench features`: image and text features of the THINGS images with open_clip and timm models.

One call, :func:`extract_features`, turns an image folder in the THINGS layout into a ThingsBench feature file
(:func:`bench.data.features.save_feature_set`): image rows in the loaders' label order, one text row per concept
(open_clip final layer only), all L2-normalised, stored as float16 or float32.

Design choices, each because a reference code base got it wrong or because clusters have no network:

* Images go through the model's **evaluation** transform (resize + centre crop), never the random-crop training one
  (ATM cached features made with ``preprocess_train``; one random crop per image, unreproducible).
* Weights come from ``--weights FILE`` or from what already sits in the local Hugging Face / open_clip / torch-hub
  cache, looked up without any network call. Nothing found → :class:`FeatureExtractionError` at once, before a model
  is built. ``random_init=True`` builds seeded random weights (seed 0) and records ``weights: "random-init"``.
* The output's metadata is its cache key (:data:`IDENTITY_KEYS`): rerunning with the same settings is a no-op,
  different settings recompute. Work in progress lives in ``FILE.partial/`` (one ``.npy`` shard per batch), so a
  killed run resumes from its last finished batch; the output itself is written atomically at the very end.
* ``layer=N`` takes block N's output (0-based, negative counts from the end) through the libraries' own
  ``forward_intermediates`` and pools it: mean of the patch tokens (ViTs; class and register tokens excluded) or
  global average pooling (CNN stages), or the class token with ``pool="cls"``. The raw residual stream is pooled (no
  final norm, no projection), so such features have the block's width and no text counterpart.

Other model families can be added with ``@register_feature_extractor("name", description=...)`` on a class that
follows :class:`Extractor`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from bench.data.concepts import make_prompts, scan_things_images
from bench.data.features import FeatureFileError, FeatureSet, PartitionFeatures, read_meta, save_feature_set
from bench.errors import UserError
from bench.io import atomic_path, atomic_write_text
from bench.paths import cache_dir
from bench.registry import FEATURES, RegistryError, register_feature_extractor, suggest

DEFAULT_TEMPLATE = "This picture is {concept}"  # ATM's prompt (reference §1.7), also the config default
DTYPES = ("float32", "float16")
POOLS = ("mean", "cls")
RANDOM_INIT = "random-init"
RANDOM_INIT_SEED = 0
#: The metadata that decides whether an existing output (or a partial run) holds the requested features.
IDENTITY_KEYS = ("model", "pretrained", "weights", "layer", "pool", "transform", "image_list_hash",
                 "prompt_template", "underscores_to_spaces", "text", "dtype")
#: Test hook: SIGKILL this process after this many freshly written image shards, to test resume from a real kill.
KILL_AFTER_ENV = "BENCH_EXTRACT_KILL_AFTER_BATCHES"
TEXT_BATCH = 256


class FeatureExtractionError(UserError, RuntimeError):
    """Features cannot be extracted as asked (no weights, unreadable image, bad option); the message says why."""


# --- weights ------------------------------------------------------------------------------------------------------

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


def _no_weights_message(model: str, looked_in: list[str], populate: str) -> str:
    return (f"no weights for {model}: not found in the local cache (looked for {'; '.join(looked_in) or 'nothing'}) "
            f"and bench features never downloads. Provide them with --weights path/to/checkpoint "
            f"(e.g. open_clip_pytorch_model.bin or model.safetensors), or populate the cache on a machine with "
            f"internet ({populate}) and copy it here (HF_HOME / HF_HUB_CACHE select where it is read), "
            f"or pass --random-init for tests and smoke runs")


# --- model families -----------------------------------------------------------------------------------------------

class Extractor:
    """A model family. Constructed cheaply from a name; :meth:`load` builds it (``device="meta"``: no memory).

    After :meth:`load`: ``transform`` (PIL image → tensor, the evaluation transform), ``num_layers`` (how many
    indices ``layer`` may take, or None), ``has_text``, ``has_cls_token``; :meth:`encode_image` and
    :meth:`encode_text` return un-normalised float tensors.
    """

    family = ""
    transform: Callable
    input_size: tuple[int, int] = (224, 224)  # (height, width) after the transform
    num_layers: int | None = None
    has_text: bool = False
    has_cls_token: bool = False
    text_absent_reason = ""

    def __init__(self, name: str, *, pretrained: str | None = None, weights: str | Path | None = None,
                 random_init: bool = False):
        self.name = name
        self.pretrained = pretrained
        self.weights_arg = Path(weights).expanduser() if weights is not None else None
        self.random_init = random_init
        if self.weights_arg is not None and random_init:
            raise FeatureExtractionError("--weights and --random-init exclude each other; choose one")

    @property
    def model_id(self) -> str:
        return f"{self.family}:{self.name}"

    def resolve_weights(self) -> Weights:
        if self.random_init:
            return Weights(None, RANDOM_INIT)
        if self.weights_arg is not None:
            if not self.weights_arg.is_file():
                raise FeatureExtractionError(f"weights file {self.weights_arg} does not exist")
            return Weights(self.weights_arg, "--weights")
        return self._cached_weights()

    def _cached_weights(self) -> Weights:
        raise NotImplementedError

    def load(self, device: str, weights: Weights | None) -> "Extractor":
        raise NotImplementedError

    def encode_image(self, x, layer: int | None, pool: str):
        raise NotImplementedError

    def encode_text(self, prompts: list[str]):
        raise FeatureExtractionError(f"{self.model_id} has no text tower")

    def resolved_pretrained(self) -> str | None:
        return self.pretrained


def _pool(spatial, prefix, pool: str, has_cls: bool, model_id: str):
    """Pool one intermediate output: patch-token mean (NCHW or NLC) or the class token."""
    if pool == "cls":
        if not has_cls or prefix is None or prefix.shape[1] == 0:
            raise FeatureExtractionError(f"{model_id} has no class token at intermediate layers; use --pool mean")
        return prefix[:, 0]
    return spatial.mean(dim=(2, 3)) if spatial.ndim == 4 else spatial.mean(dim=1)


@contextmanager
def _quiet_warnings():
    """open_clip logs 'initialized randomly' at WARNING on every weightless build, including our meta skeletons."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


@contextmanager
def _build_context(device: str, weights: Weights | None):
    import torch

    if device == "meta":
        with torch.device("meta"):
            yield
    else:
        # Seeded and on CPU, so "random-init" names the same weights on every machine and in every process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            yield


@register_feature_extractor(
    "open_clip",
    description="open_clip CLIP models, image and text towers (e.g. open_clip:ViT-H-14 with --pretrained laion2b_s32b_b79k)",
    citation="Ilharco et al. 2021, OpenCLIP (doi:10.5281/zenodo.5143773); Cherti et al. CVPR 2023",
)
class OpenClipExtractor(Extractor):
    family = "open_clip"

    def __init__(self, name: str, **kwargs: Any):
        super().__init__(name, **kwargs)
        import open_clip

        if name.startswith(("hf-hub:", "local-dir:")):
            raise FeatureExtractionError(
                f"open_clip:{name}: use a built-in model name with --weights (e.g. open_clip:ViT-H-14 --weights "
                f"open_clip_pytorch_model.bin); hub and local-dir schemas are not supported")
        known = open_clip.list_models()
        if name not in known:
            raise FeatureExtractionError(f"unknown open_clip model {name!r}.{suggest(name, known)}")
        tags = open_clip.list_pretrained_tags_by_model(name)
        if self.pretrained is not None and self.pretrained not in tags:
            raise FeatureExtractionError(
                f"open_clip:{name} has no pretrained tag {self.pretrained!r}; known: {', '.join(tags) or '(none)'}")
        # Without --pretrained, the first published tag (ViT-H-14: laion2b_s32b_b79k, ATM's and UBP's weights).
        self.tag = self.pretrained or (tags[0] if tags else None)
        self.tag_cfg = open_clip.get_pretrained_cfg(name, self.tag) if self.tag else {}
        self._tokenizer = None

    def resolved_pretrained(self) -> str | None:
        return self.tag

    def _cached_weights(self) -> Weights:
        looked = []
        hub = self.tag_cfg.get("hf_hub", "")
        if hub:
            repo, filename = os.path.split(hub)
            # open_clip prefers a .safetensors twin of the named file (pretrained.py: _get_safe_alternatives)
            names = ([filename[:-4] + ".safetensors", filename] if filename.endswith((".bin", ".pth")) else [filename]
                     ) if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            found = _cached_hf_file(repo, names)
            if found:
                return Weights(found, f"hf-cache:{repo}")
            looked.append(f"{repo}/{'|'.join(names)} under {hf_hub_cache()}")
        url = self.tag_cfg.get("url", "")
        if url:
            candidate = Path("~/.cache/clip").expanduser() / os.path.basename(url)
            if candidate.is_file():
                return Weights(candidate, "url-cache")
            looked.append(str(candidate))
        if not self.tag:
            raise FeatureExtractionError(
                f"open_clip:{self.name} has no published weights; pass --weights FILE, or --random-init for smoke runs")
        populate = (f"python -c \"import open_clip; open_clip.create_model_and_transforms('{self.name}', "
                    f"pretrained='{self.tag}')\"")
        raise FeatureExtractionError(_no_weights_message(f"open_clip:{self.name} (pretrained {self.tag!r})",
                                                         looked, populate))

    def load(self, device: str, weights: Weights | None) -> "OpenClipExtractor":
        import open_clip

        cfg = self.tag_cfg
        checkpoint = None if weights is None or weights.path is None else str(weights.path)
        kwargs = dict(force_quick_gelu=bool(cfg.get("quick_gelu", False)), image_mean=cfg.get("mean"),
                      image_std=cfg.get("std"), image_interpolation=cfg.get("interpolation"),
                      image_resize_mode=cfg.get("resize_mode"))
        try:
            with _quiet_warnings(), _build_context(device, weights):
                model, _, preprocess_eval = open_clip.create_model_and_transforms(
                    self.name, pretrained=checkpoint, device="meta" if device == "meta" else "cpu", **kwargs)
        except Exception as exc:
            if checkpoint is None:
                raise
            raise FeatureExtractionError(
                f"cannot load weights {checkpoint} into open_clip:{self.name}: {str(exc).splitlines()[0][:400]}") from exc
        self.model = model.to(device).eval() if device != "meta" else model.eval()
        self.transform = preprocess_eval
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.input_size = (size, size) if isinstance(size, int) else tuple(size)
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
            self.num_layers, self.has_cls_token = len(visual.transformer.resblocks), True
        elif hasattr(visual, "trunk") and hasattr(visual.trunk, "feature_info"):
            self.num_layers = len(visual.trunk.feature_info)
            self.has_cls_token = getattr(visual.trunk, "cls_token", None) is not None
        elif all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
            self.num_layers, self.has_cls_token = 5, False  # ModifiedResNet: stem, layer1..layer4
        else:
            self.num_layers = None
        self.has_text = hasattr(model, "encode_text")
        return self

    def tokenizer(self):
        import open_clip

        if self._tokenizer is None:
            try:
                self._tokenizer = open_clip.get_tokenizer(self.name)
            except Exception as exc:
                raise FeatureExtractionError(
                    f"the tokenizer of open_clip:{self.name} is not available offline ({str(exc).splitlines()[0]}); "
                    f"pass --no-text to extract image features only") from exc
        return self._tokenizer

    def encode_image(self, x, layer: int | None, pool: str):
        if layer is None:
            return self.model.encode_image(x)
        out = self.model.visual.forward_intermediates(
            x, indices=[layer], stop_early=True, intermediates_only=True, output_extra_tokens=pool == "cls")
        prefix = out.get("image_intermediates_prefix", [None])[0]
        return _pool(out["image_intermediates"][0], prefix, pool, self.has_cls_token, self.model_id)

    def encode_text(self, prompts: list[str]):
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer()(prompts).to(device))


@register_feature_extractor(
    "timm",
    description="timm image models (e.g. timm:vit_base_patch16_224.augreg_in21k); image features only, no text tower",
    citation="Wightman 2019, PyTorch Image Models (doi:10.5281/zenodo.4414861)",
)
class TimmExtractor(Extractor):
    family = "timm"
    text_absent_reason = "timm models have no text tower"

    def __init__(self, name: str, **kwargs: Any):
        super().__init__(name, **kwargs)
        import timm
        from timm.models import get_pretrained_cfg, split_model_name_tag

        if self.pretrained is not None:
            raise FeatureExtractionError(
                f"timm takes the pretrained tag in the model name (timm:{name}.{self.pretrained}), not --pretrained")
        arch, tag = split_model_name_tag(name)
        if not timm.is_model(arch):
            raise FeatureExtractionError(f"unknown timm model {arch!r}.{suggest(arch, timm.list_models())}")
        try:
            self.pretrained_cfg = get_pretrained_cfg(name)  # None: the architecture has no published weights
        except RuntimeError:
            raise FeatureExtractionError(f"timm model {arch!r} has no pretrained tag {tag!r}; known: "
                                         f"{', '.join(timm.list_pretrained(arch + '.*')) or '(none)'}") from None

    def resolved_pretrained(self) -> str | None:
        return self.pretrained_cfg.tag if self.pretrained_cfg is not None else None

    def _cached_weights(self) -> Weights:
        import torch

        cfg, looked = self.pretrained_cfg, []
        if cfg is None:
            raise FeatureExtractionError(
                f"timm:{self.name} has no published weights; pass --weights FILE, or --random-init for smoke runs")
        if cfg.hf_hub_id:
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [
                "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
            found = _cached_hf_file(cfg.hf_hub_id, names)
            if found:
                return Weights(found, f"hf-cache:{cfg.hf_hub_id}")
            looked.append(f"{cfg.hf_hub_id}/{'|'.join(names)} under {hf_hub_cache()}")
        if cfg.url:
            candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
            if candidate.is_file():
                return Weights(candidate, "url-cache")
            looked.append(str(candidate))
        full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
        populate = f"python -c \"import timm; timm.create_model('{full}', pretrained=True)\""
        raise FeatureExtractionError(_no_weights_message(f"timm:{self.name}", looked, populate))

    def load(self, device: str, weights: Weights | None) -> "TimmExtractor":
        import timm

        checkpoint = None if weights is None or weights.path is None else str(weights.path)
        try:
            with _build_context(device, weights):
                if checkpoint:
                    # The file goes through timm's own pretrained loader (checkpoint filters for original formats)
                    # with the classifier kept, so the load is strict: a wrong checkpoint fails instead of half-loading.
                    model = timm.create_model(self.name, pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
                else:
                    model = timm.create_model(self.name, pretrained=False)
        except Exception as exc:
            if checkpoint is None:
                raise
            raise FeatureExtractionError(
                f"cannot load weights {checkpoint} into timm:{self.name}: {str(exc).splitlines()[0][:400]}") from exc
        model.reset_classifier(0)  # forward() then returns the pooled pre-logits embedding
        self.model = model.to(device).eval() if device != "meta" else model.eval()
        data_cfg = timm.data.resolve_model_data_config(model)
        self.transform = timm.data.create_transform(**data_cfg, is_training=False)
        self.input_size = tuple(data_cfg["input_size"][1:])
        self.num_layers = len(model.feature_info) if hasattr(model, "forward_intermediates") else None
        self.has_cls_token = getattr(model, "cls_token", None) is not None
        return self

    def encode_image(self, x, layer: int | None, pool: str):
        if layer is None:
            return self.model(x)
        kwargs = {"return_prefix_tokens": True} if pool == "cls" else {}
        if pool == "cls" and not self.has_cls_token:
            raise FeatureExtractionError(f"{self.model_id} has no class token; use --pool mean")
        out = self.model.forward_intermediates(x, indices=[layer], stop_early=True, intermediates_only=True, **kwargs)[0]
        spatial, prefix = out if isinstance(out, tuple) else (out, None)
        return _pool(spatial, prefix, pool, self.has_cls_token, self.model_id)


def get_extractor(model: str, **kwargs: Any) -> Extractor:
    """``"open_clip:ViT-H-14"`` → an unbuilt :class:`Extractor` of the registered family."""
    family, sep, name = model.partition(":")
    if not sep or not name:
        raise FeatureExtractionError(
            f"--model must be FAMILY:NAME, e.g. open_clip:ViT-H-14 or timm:resnet50 (got {model!r}); "
            f"families: {', '.join(FEATURES.names())}")
    try:
        cls = FEATURES.get(family).obj
    except RegistryError as exc:
        raise FeatureExtractionError(str(exc)) from None
    return cls(name, **kwargs)


# --- extraction ---------------------------------------------------------------------------------------------------

@dataclass
class ExtractionResult:
    path: Path
    meta: dict
    cache_hit: bool = False
    computed_batches: int = 0
    reused_batches: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


def _load_image(path: Path, transform: Callable):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise FeatureExtractionError(f"cannot read image {path}: {exc}") from exc
    return transform(img)


def _shard_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _normalized(t) -> np.ndarray:
    x = t.detach().float().cpu().numpy()
    if not np.all(np.isfinite(x)):
        raise FeatureExtractionError("the model produced NaN/Inf features; check the weights file")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a name
        np.save(fh, arr)


def _load_shard(path: Path, rows: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return arr if arr.ndim == 2 and arr.shape[0] == rows else None


def _identity(meta: dict) -> dict:
    return {k: meta.get(k) for k in IDENTITY_KEYS}


def _diff(old: dict, new: dict) -> str:
    keys = [k for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {str(old.get(k))[:60]!r} → {str(new.get(k))[:60]!r}" for k in keys)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatureExtractionError(f"--device {device}: CUDA is not available here")
    return device


def _meta_dim(ex: Extractor, layer: int | None, pool: str) -> int | None:
    """Feature width from a forward pass on the meta device: no memory, no compute; None if an op has no meta kernel."""
    import torch

    try:
        with torch.inference_mode():
            return int(ex.encode_image(torch.empty(1, 3, *ex.input_size, device="meta"), layer, pool).shape[-1])
    except FeatureExtractionError:
        raise
    except Exception:
        return None


def extract_features(
    images: str | Path,
    model: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    pretrained: str | None = None,
    random_init: bool = False,
    layer: int | None = None,
    pool: str | None = None,
    text: bool = True,
    prompt_template: str = DEFAULT_TEMPLATE,
    underscores_to_spaces: bool = False,
    dtype: str = "float32",
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExtractionResult:
    """Write the image (and, for open_clip's final layer, text) features of a THINGS image folder to ``out``.

    Returns at once with ``cache_hit=True`` when ``out`` already holds features with the same identity
    (:data:`IDENTITY_KEYS`), unless ``force``. Resumes from ``out.partial/`` when a run with the same identity was
    interrupted. Raises :class:`FeatureExtractionError` (or :class:`bench.data.concepts.ImageFolderError`) for
    anything the user can fix; ``out`` is then left untouched.
    """
    t0 = time.monotonic()
    messages: list[str] = []

    def say(msg: str) -> None:
        messages.append(msg)
        if log is not None:
            log(msg)

    out = Path(out)
    # Every option is checked before the first image is read or a model is built.
    if out.suffix != ".npz":
        raise FeatureExtractionError(f"--out {out}: feature files are .npz")
    if dtype not in DTYPES:
        raise FeatureExtractionError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if batch_size < 1 or workers < 0:
        raise FeatureExtractionError("--batch-size must be at least 1 and --workers at least 0")
    if pool is not None and layer is None:
        raise FeatureExtractionError("--pool applies to --layer only; the final layer uses the model's own head")
    if layer is not None and (pool or "mean") not in POOLS:
        raise FeatureExtractionError(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    try:
        make_prompts(["x"], prompt_template)
    except ValueError as exc:
        raise FeatureExtractionError(str(exc)) from None

    things = scan_things_images(images)
    ex = get_extractor(model, pretrained=pretrained, weights=weights, random_init=random_init)
    w = ex.resolve_weights()
    ex.load("meta", None)  # the skeleton: transform, depth and width, in well under a second even for ViT-H-14

    if layer is not None:
        if ex.num_layers is None:
            raise FeatureExtractionError(f"{ex.model_id} does not expose intermediate layers; drop --layer")
        if not -ex.num_layers <= layer < ex.num_layers:
            raise FeatureExtractionError(
                f"--layer {layer} is out of range for {ex.model_id}: it has {ex.num_layers} blocks "
                f"(0..{ex.num_layers - 1}, or -1 for the last)")
        layer = layer % ex.num_layers
        pool = pool or "mean"
    else:
        pool = "head"
    if ex.has_text and layer is None and text:
        with_text, text_note = True, ""
        ex.tokenizer()  # fail now, not after the images, if the tokenizer needs files that are not here
    else:
        with_text = False
        text_note = ("disabled with --no-text" if not text else ex.text_absent_reason if not ex.has_text
                     else "intermediate-layer image features have no text counterpart")
    dim = _meta_dim(ex, layer, pool)

    prompts = {"train": make_prompts(things.train_concepts, prompt_template, underscores_to_spaces),
               "test": make_prompts(things.test_concepts, prompt_template, underscores_to_spaces)}
    meta = {
        "model": ex.model_id, "family": ex.family, "model_name": ex.name, "pretrained": ex.resolved_pretrained(),
        "weights": w.digest, "weights_source": w.source if w.path is None else f"{w.source}: {w.path}",
        "layer": layer, "num_layers": ex.num_layers, "pool": pool, "intermediate_norm": False if layer is not None else None,
        "transform": repr(ex.transform), "image_list_hash": things.list_hash(),
        "images_root": str(Path(images).resolve()),
        "n_train_images": len(things.train_images), "n_test_images": len(things.test_images),
        "n_train_concepts": len(things.train_concepts), "n_test_concepts": len(things.test_concepts),
        "prompt_template": prompt_template, "underscores_to_spaces": underscores_to_spaces,
        "text": with_text, "text_note": text_note, "dtype": dtype, "normalized": True, "dim": dim,
        "created_by": "bench features",
    }
    if w.path is None:
        meta["seed"] = RANDOM_INIT_SEED
    identity = _identity(meta)

    if out.exists() and not force:
        try:
            old = read_meta(out)
        except FeatureFileError as exc:
            say(f"{out} exists but is not a readable feature file ({exc}); recomputing")
        else:
            if _identity(old) == identity:
                where = "final layer" if layer is None else f"layer {layer}, {pool} pooled"
                say(f"cache hit: {out} already holds these features ({ex.model_id}, {where}, "
                    f"weights {str(w.digest)[:12]}); nothing to do")
                return ExtractionResult(out, old, cache_hit=True, seconds=time.monotonic() - t0, messages=messages)
            say(f"{out} was made with different settings ({_diff(old, identity)}); recomputing")
    elif out.exists():
        say(f"--force: recomputing {out}")

    partial = out.with_name(out.name + ".partial")
    state = {"identity": identity, "batch_size": batch_size}
    state_file = partial / "state.json"
    if partial.exists():
        try:
            old_state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            old_state = None
        if old_state != state:
            if isinstance(old_state, dict) and isinstance(old_state.get("identity"), dict):
                why = (_diff(old_state["identity"], identity)
                       or f"batch size {old_state.get('batch_size')} → {batch_size}")
            else:
                why = "its state.json is unreadable"
            say(f"discarding {partial} from an interrupted run with other settings ({why})")
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_file, json.dumps(state, sort_keys=True))

    plan = []  # (partition, batch index, start, end)
    for part, paths in (("train", things.train_images), ("test", things.test_images)):
        (partial / f"{part}_image").mkdir(exist_ok=True)
        plan += [(part, i, s, e) for i, (s, e) in enumerate(_shard_batches(len(paths), batch_size))]
    shard_path = lambda part, i: partial / f"{part}_image" / f"{i:06d}.npy"  # noqa: E731
    todo = [p for p in plan if _load_shard(shard_path(p[0], p[1]), p[3] - p[2]) is None]
    reused = len(plan) - len(todo)
    if reused:
        say(f"resuming {partial}: {reused} of {len(plan)} batches already done")

    result = ExtractionResult(out, meta, reused_batches=reused, messages=messages)
    needs_text = with_text and any(not (partial / f"{p}_text.npy").is_file() for p in ("train", "test"))
    if todo or needs_text:
        import torch

        dev = _resolve_device(device)
        meta["device"] = dev
        ex.load(dev, w)
        kill_after = int(os.environ.get(KILL_AFTER_ENV) or 0)
        all_paths = {"train": things.train_images, "test": things.test_images}
        from tqdm import tqdm

        bar = tqdm(total=len(plan), initial=reused, desc=f"features {ex.model_id}", unit="batch",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            with torch.inference_mode(), ThreadPoolExecutor(max(1, workers)) as pool_ex:
                for (part, i, _, _), batch in _prefetched(todo, all_paths, ex.transform, pool_ex):
                    feats = _normalized(ex.encode_image(batch.to(dev), layer, pool))
                    _save_npy(shard_path(part, i), feats.astype(np.float32))
                    result.computed_batches += 1
                    bar.update(1)
                    if kill_after and result.computed_batches >= kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                if with_text:
                    for part in ("train", "test"):
                        target = partial / f"{part}_text.npy"
                        if _load_shard(target, len(prompts[part])) is None:
                            rows = [_normalized(ex.encode_text(prompts[part][s:e]))
                                    for s, e in _shard_batches(len(prompts[part]), TEXT_BATCH)]
                            _save_npy(target, np.concatenate(rows).astype(np.float32))
        finally:
            bar.close()

    parts = {}
    for part in ("train", "test"):
        shards = [_load_shard(shard_path(p, i), e - s) for p, i, s, e in plan if p == part]
        if any(x is None for x in shards):
            raise FeatureExtractionError(f"{partial}: a shard of {part} images vanished while running; rerun")
        image = np.concatenate(shards)
        text_rows = np.load(partial / f"{part}_text.npy") if with_text else None
        parts[part] = PartitionFeatures(image=image, text=text_rows)
    meta["dim"] = int(parts["train"].image.shape[1])
    save_feature_set(out, FeatureSet(train=parts["train"], test=parts["test"], meta=meta), dtype=dtype)
    shutil.rmtree(partial, ignore_errors=True)
    result.meta = read_meta(out)
    result.seconds = time.monotonic() - t0
    say(f"wrote {out}: train {parts['train'].image.shape}, test {parts['test'].image.shape}, "
        f"text {'yes' if with_text else 'no (' + text_note + ')'}, {dtype}, "
        f"{result.computed_batches} batches computed, {reused} reused, {result.seconds:.1f}s")
    return result


def _prefetched(todo, all_paths: dict, transform, executor) -> Iterator[tuple[tuple, Any]]:
    """Batches in ``todo`` order; the next batch's images load on worker threads while the model runs."""
    import torch

    def submit(item):
        part, _, s, e = item
        return [executor.submit(_load_image, p, transform) for p in all_paths[part][s:e]]

    queue: deque = deque()
    nxt = 0
    while nxt < len(todo) and len(queue) < 2:
        queue.append((todo[nxt], submit(todo[nxt])))
        nxt += 1
    while queue:
        item, futures = queue.popleft()
        if nxt < len(todo):
            queue.append((todo[nxt], submit(todo[nxt])))
            nxt += 1
        try:
            yield item, torch.stack([f.result() for f in futures])
        except BaseException:
            for _, pending in queue:
                for f in pending:
                    f.cancel()
            raise
