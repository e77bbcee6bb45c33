"""The model families of ``bench features``: open_clip (image and text towers) and timm (image only).

Each family is a class following :class:`Extractor`, registered in the ``FEATURES`` registry; a plugin adds another
with ``@register_feature_extractor("name", description=...)``. Images go through the model's **evaluation** transform
(resize + centre crop) by default. The random-crop training transform (``train_transform``) is there for
``--transform train``, which reproduces ATM's cached features (made with open_clip's ``preprocess_train``: one
random crop per image), seeded per image (:mod:`bench.extract.transforms`).

``layer=N`` takes block N's output through the libraries' own ``forward_intermediates`` and pools it: mean of the
patch tokens (ViTs; class and register tokens excluded) or global average pooling (CNN stages), or the class token
with ``pool="cls"``. The raw residual stream is pooled (no final norm, no projection), so such features have the
block's width and no text counterpart.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from bench.extract.errors import FeatureExtractionError
from bench.extract.weights import (RANDOM_INIT_SEED, Weights, download_weights, find_local_weights,
                                   no_weights_message, offline_mode, resolve_weights)
from bench.registry import FEATURES, RegistryError, register_feature_extractor, suggest


class Extractor:
    """A model family. Constructed cheaply from a name; :meth:`load` builds it (``device="meta"``: no memory).

    After :meth:`load`: ``transform`` (PIL image → tensor, the evaluation transform), ``train_transform`` (the
    family's random training transform, or None where it has none), ``num_layers`` (how many indices ``layer`` may
    take, or None), ``has_text``, ``has_cls_token``; :meth:`encode_image` and :meth:`encode_text` return
    un-normalised float tensors.
    """

    family = ""
    transform: Callable
    train_transform: Callable | None = None
    input_size: tuple[int, int] = (224, 224)  # (height, width) after the transform
    num_layers: int | None = None
    has_text: bool = False
    has_cls_token: bool = False
    text_absent_reason = ""

    def __init__(self, name: str, *, pretrained: str | None = None, weights: str | Path | None = None,
                 random_init: bool = False, offline: bool = False):
        self.name = name
        self.offline = offline_mode(offline)
        self.pretrained = pretrained
        self.weights_arg = Path(weights).expanduser() if weights is not None else None
        self.random_init = random_init
        if self.weights_arg is not None and random_init:
            raise FeatureExtractionError("--weights and --random-init exclude each other; choose one")

    @property
    def model_id(self) -> str:
        return f"{self.family}:{self.name}"

    def resolve_weights(self) -> Weights:
        return resolve_weights(self.weights_arg, self.random_init, self._cached_weights)

    def _cached_weights(self) -> Weights:
        """The family's published weights from the local caches (:func:`find_local_weights`), downloaded into them
        when online, or an error."""
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
        repo, names = None, []
        hub = self.tag_cfg.get("hf_hub", "")
        if hub:
            repo, filename = os.path.split(hub)
            # open_clip prefers a .safetensors twin of the named file (pretrained.py: _get_safe_alternatives)
            names = ([filename[:-4] + ".safetensors", filename] if filename.endswith((".bin", ".pth")) else [filename]
                     ) if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        url = self.tag_cfg.get("url", "")
        url_file = Path("~/.cache/clip").expanduser() / os.path.basename(url) if url else None  # open_clip's folder
        found, looked = find_local_weights(repo, names, url_file)
        if found:
            return found
        if not self.tag:
            raise FeatureExtractionError(
                f"open_clip:{self.name} has no published weights; pass --weights FILE, or --random-init for smoke runs")
        if not self.offline:
            import open_clip

            where = f"hf:{hub}" if hub else self.tag_cfg.get("url", "")
            return download_weights(f"open_clip:{self.name} (pretrained {self.tag!r})", where,
                                    lambda: open_clip.pretrained.download_pretrained(self.tag_cfg))
        populate = (f"python -c \"import open_clip; open_clip.create_model_and_transforms('{self.name}', "
                    f"pretrained='{self.tag}')\"")
        raise FeatureExtractionError(no_weights_message(f"open_clip:{self.name} (pretrained {self.tag!r})",
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
                model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
                    self.name, pretrained=checkpoint, device="meta" if device == "meta" else "cpu", **kwargs)
        except Exception as exc:
            if checkpoint is None:
                raise
            raise FeatureExtractionError(
                f"cannot load weights {checkpoint} into open_clip:{self.name}: {str(exc).splitlines()[0][:400]}") from exc
        self.model = model.to(device).eval() if device != "meta" else model.eval()
        self.transform = preprocess_eval
        self.train_transform = preprocess_train  # RandomResizedCrop, scale (0.9, 1): ATM's preprocess_train
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

        cfg = self.pretrained_cfg
        if cfg is None:
            raise FeatureExtractionError(
                f"timm:{self.name} has no published weights; pass --weights FILE, or --random-init for smoke runs")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [
            "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        # timm keeps URL downloads where torch.hub does
        url_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url) if cfg.url else None
        found, looked = find_local_weights(cfg.hf_hub_id, names, url_file)
        if found:
            return found
        if not self.offline:
            return self._download(cfg, names)
        full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
        populate = f"python -c \"import timm; timm.create_model('{full}', pretrained=True)\""
        raise FeatureExtractionError(no_weights_message(f"timm:{self.name}", looked, populate))

    def _download(self, cfg, names: list[str]) -> Weights:
        """timm's weights into the hub cache (the first of ``names`` the repository has) or torch.hub's folder."""
        model = f"timm:{self.name}"
        if cfg.hf_hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            for i, name in enumerate(names):
                try:
                    return download_weights(model, f"hf:{cfg.hf_hub_id}/{name}",
                                            lambda: hf_hub_download(cfg.hf_hub_id, name))
                except FeatureExtractionError as exc:
                    if not isinstance(exc.__cause__, EntryNotFoundError) or i == len(names) - 1:
                        raise
        from timm.models._hub import download_cached_file

        return download_weights(model, cfg.url, lambda: download_cached_file(cfg.url))

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
        self.train_transform = timm.data.create_transform(**data_cfg, is_training=True)
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

