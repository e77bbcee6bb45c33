"""The cached, resumable extraction of ``bench features``: options → plan → batches → one feature file.

:func:`extract_features` checks every option before the first image is read or a model is built, returns at once
when ``out`` already holds the requested features (:mod:`bench.extract.metadata`), and otherwise computes the
missing batches into ``out.partial/`` (:mod:`bench.extract.partial`) before writing ``out`` atomically at the end.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from bench.data.concepts import make_prompts, scan_things_images
from bench.data.features import FeatureFileError, FeatureSet, PartitionFeatures, read_meta, save_feature_set
from bench.extract.errors import FeatureExtractionError
from bench.extract.metadata import describe, describe_difference, identity
from bench.extract.models import Extractor, get_extractor
from bench.extract.partial import PARTITIONS, Batch, PartialRun, load_shard, save_npy, shard_batches
from bench.extract.transforms import TRANSFORMS, ImageTransform, image_transform
from bench.extract.weights import Weights

DEFAULT_TEMPLATE = "This picture is {concept}"  # ATM's prompt (reference §1.7), also the config default
DTYPES = ("float32", "float16")
POOLS = ("mean", "cls")
TEXT_BATCH = 256


@dataclass
class ExtractionResult:
    path: Path
    meta: dict
    cache_hit: bool = False
    computed_batches: int = 0
    reused_batches: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


@dataclass
class _Job:
    """What one call extracts, settled before any model weights are loaded."""

    ex: Extractor
    weights: Weights
    layer: int | None
    pool: str
    paths: dict[str, list[Path]]
    prompts: dict[str, list[str]] | None  # None: no text features
    transform: str                        # "eval" or "train" (bench.extract.transforms)
    seed: int | None                      # the training transform's seed; None with "eval"


def extract_features(
    images: str | Path,
    model: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    pretrained: str | None = None,
    random_init: bool = False,
    offline: bool = False,
    layer: int | None = None,
    pool: str | None = None,
    text: bool = True,
    prompt_template: str = DEFAULT_TEMPLATE,
    underscores_to_spaces: bool = False,
    dtype: str = "float32",
    transform: str = "eval",
    seed: int | None = None,
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ExtractionResult:
    """Write the image (and, for open_clip's final layer, text) features of a THINGS image folder to ``out``.

    Returns at once with ``cache_hit=True`` when ``out`` already holds features with the same identity
    (:data:`~bench.extract.metadata.IDENTITY_KEYS`), unless ``force``. Resumes from ``out.partial/`` when a run with
    the same identity was interrupted. ``on_batch(n)`` is called after the n-th freshly computed image batch is on
    disk (an observer: progress elsewhere, or a test that kills the process there). ``transform="train"`` applies the
    model's random training transform, seeded per image from ``seed`` (default 0; :mod:`bench.extract.transforms`);
    ``seed`` is refused with the deterministic ``"eval"`` transform. Weights not in the local caches are downloaded by
    the model's library unless ``offline`` (or ``HF_HUB_OFFLINE=1``). Raises :class:`FeatureExtractionError` (or
    :class:`bench.data.concepts.ImageFolderError`) for anything the user can fix; ``out`` is then left untouched.
    """
    t0 = time.monotonic()
    out = Path(out)
    messages: list[str] = []
    say = _reporter(messages, log)
    _check_options(out, dtype, batch_size, workers, layer, pool, prompt_template)
    _check_transform(transform, seed)
    job, meta = _settle(images, model, weights=weights, pretrained=pretrained, random_init=random_init,
                        offline=offline, layer=layer, pool=pool, text=text, prompt_template=prompt_template,
                        underscores_to_spaces=underscores_to_spaces, dtype=dtype, transform=transform, seed=seed)
    old = _existing_output(out, meta, force, say)
    if old is not None:
        return ExtractionResult(out, old, cache_hit=True, seconds=time.monotonic() - t0, messages=messages)
    result = ExtractionResult(out, meta, messages=messages)
    work, plan, todo = _resume(out, job, meta, batch_size, result, say)
    needs_text = job.prompts is not None and any(not work.text_path(p).is_file() for p in PARTITIONS)
    if todo or needs_text:
        _compute(job, work, todo, len(plan), result, device=device, workers=workers, progress=progress,
                 on_batch=on_batch)
    shapes = _write_output(job, work, plan, result, dtype)
    result.seconds = time.monotonic() - t0
    text_note = 'yes' if meta['text'] else 'no (' + meta['text_note'] + ')'
    say(f"wrote {out}: train {shapes['train']}, test {shapes['test']}, text {text_note}, {dtype}, "
        f"{result.computed_batches} batches computed, {result.reused_batches} reused, {result.seconds:.1f}s")
    return result


def _reporter(messages: list[str], log: Callable[[str], None] | None) -> Callable[[str], None]:
    """Messages are kept in the result (tests read them) and passed on to ``log`` (the CLI prints them)."""
    def say(msg: str) -> None:
        messages.append(msg)
        if log is not None:
            log(msg)
    return say


def _check_options(out: Path, dtype: str, batch_size: int, workers: int, layer: int | None, pool: str | None,
                   prompt_template: str) -> None:
    """Every option the model is not needed for, checked before the first image is read or a model is built."""
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


def _check_transform(transform: str, seed: int | None) -> None:
    if transform not in TRANSFORMS:
        raise FeatureExtractionError(f"--transform must be one of {', '.join(TRANSFORMS)}, not {transform!r}")
    if seed is not None and transform == "eval":  # a silently ignored seed would suggest the features depend on it
        raise FeatureExtractionError("--seed applies to --transform train only; the evaluation transform has no "
                                     "randomness")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise FeatureExtractionError(f"--seed must be a non-negative integer, not {seed!r}")


def _settle(images: str | Path, model: str, *, weights: str | Path | None, pretrained: str | None,
            random_init: bool, offline: bool, layer: int | None, pool: str | None, text: bool, prompt_template: str,
            underscores_to_spaces: bool, dtype: str, transform: str, seed: int | None) -> tuple[_Job, dict]:
    """The job and its metadata, from the images and a weightless model skeleton; fails before any real work."""
    things = scan_things_images(images)
    ex = get_extractor(model, pretrained=pretrained, weights=weights, random_init=random_init, offline=offline)
    w = ex.resolve_weights()
    ex.load("meta", None)  # the skeleton: transform, depth and width, in well under a second even for ViT-H-14
    layer, pool = _settle_layer(ex, layer, pool)
    with_text, text_note = _settle_text(ex, layer, text)
    seed = None if transform == "eval" else (0 if seed is None else seed)
    chosen, _ = image_transform(ex, transform, seed)  # refuses "train" where the family has no training transform
    meta = describe(ex, w, things, images, layer=layer, pool=pool, text=with_text, text_note=text_note,
                    prompt_template=prompt_template, underscores_to_spaces=underscores_to_spaces, dtype=dtype,
                    dim=_meta_dim(ex, layer, pool), transform=chosen, transform_mode=transform, transform_seed=seed)
    prompts = {"train": make_prompts(things.train_concepts, prompt_template, underscores_to_spaces),
               "test": make_prompts(things.test_concepts, prompt_template, underscores_to_spaces)}
    job = _Job(ex, w, layer, pool, {"train": things.train_images, "test": things.test_images},
               prompts if with_text else None, transform, seed)
    return job, meta


def _settle_layer(ex: Extractor, layer: int | None, pool: str | None) -> tuple[int | None, str]:
    """``layer`` as an absolute block index (so -1 and the last index are one cache entry) and the pooling."""
    if layer is None:
        return None, "head"
    if ex.num_layers is None:
        raise FeatureExtractionError(f"{ex.model_id} does not expose intermediate layers; drop --layer")
    if not -ex.num_layers <= layer < ex.num_layers:
        raise FeatureExtractionError(
            f"--layer {layer} is out of range for {ex.model_id}: it has {ex.num_layers} blocks "
            f"(0..{ex.num_layers - 1}, or -1 for the last)")
    return layer % ex.num_layers, pool or "mean"


def _settle_text(ex: Extractor, layer: int | None, text: bool) -> tuple[bool, str]:
    """Whether text features are written, and if not, why (stored as ``text_note``)."""
    if ex.has_text and layer is None and text:
        ex.tokenizer()  # fail now, not after the images, if the tokenizer needs files that are not here
        return True, ""
    return False, ("disabled with --no-text" if not text else ex.text_absent_reason if not ex.has_text
                   else "intermediate-layer image features have no text counterpart")


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


def _existing_output(out: Path, meta: dict, force: bool, say: Callable[[str], None]) -> dict | None:
    """The metadata of ``out`` if it already holds exactly these features (a cache hit), else None."""
    if not out.exists():
        return None
    if force:
        say(f"--force: recomputing {out}")
        return None
    try:
        old = read_meta(out)
    except FeatureFileError as exc:
        say(f"{out} exists but is not a readable feature file ({exc}); recomputing")
        return None
    if identity(old) != identity(meta):
        say(f"{out} was made with different settings ({describe_difference(old, identity(meta))}); recomputing")
        return None
    where = "final layer" if meta["layer"] is None else f"layer {meta['layer']}, {meta['pool']} pooled"
    say(f"cache hit: {out} already holds these features ({meta['model']}, {where}, "
        f"weights {str(meta['weights'])[:12]}); nothing to do")
    return old


def _resume(out: Path, job: _Job, meta: dict, batch_size: int, result: ExtractionResult,
            say: Callable[[str], None]) -> tuple[PartialRun, list[Batch], list[Batch]]:
    """The work folder, every batch, and the batches not yet on disk (the rest are reused)."""
    work = PartialRun(out)
    discarded = work.adopt(identity(meta), batch_size)
    if discarded:
        say(f"discarding {work.root} from an interrupted run with other settings ({discarded})")
    plan = work.plan(job.paths, batch_size)
    todo = work.missing(plan)
    result.reused_batches = len(plan) - len(todo)
    if result.reused_batches:
        say(f"resuming {work.root}: {result.reused_batches} of {len(plan)} batches already done")
    return work, plan, todo


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatureExtractionError(f"--device {device}: CUDA is not available here")
    return device


def _compute(job: _Job, work: PartialRun, todo: list[Batch], total: int, result: ExtractionResult, *, device: str,
             workers: int, progress: bool, on_batch: Callable[[int], None] | None) -> None:
    """Load the weights and write every missing image shard, then the text features, into ``work``."""
    import torch
    from tqdm import tqdm

    dev = _resolve_device(device)
    result.meta["device"] = dev
    job.ex.load(dev, job.weights)
    _, per_image = image_transform(job.ex, job.transform, job.seed)  # the loaded model's own transform objects
    bar = tqdm(total=total, initial=result.reused_batches, desc=f"features {job.ex.model_id}", unit="batch",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        with torch.inference_mode(), ThreadPoolExecutor(max(1, workers)) as pool_ex:
            for (part, i, _, _), batch in _prefetched(todo, job.paths, per_image, pool_ex):
                feats = _normalized(job.ex.encode_image(batch.to(dev), job.layer, job.pool))
                save_npy(work.shard_path(part, i), feats.astype(np.float32))
                result.computed_batches += 1
                bar.update(1)
                if on_batch is not None:
                    on_batch(result.computed_batches)
            if job.prompts is not None:
                _encode_texts(job.ex, job.prompts, work)
    finally:
        bar.close()


def _encode_texts(ex: Extractor, prompts: dict[str, list[str]], work: PartialRun) -> None:
    for part in PARTITIONS:
        target = work.text_path(part)
        if load_shard(target, len(prompts[part])) is None:
            rows = [_normalized(ex.encode_text(prompts[part][s:e]))
                    for s, e in shard_batches(len(prompts[part]), TEXT_BATCH)]
            save_npy(target, np.concatenate(rows).astype(np.float32))


def _write_output(job: _Job, work: PartialRun, plan: list[Batch], result: ExtractionResult,
                  dtype: str) -> dict[str, tuple]:
    """Assemble the shards into ``result.path`` (atomically), remove the work folder; the partitions' shapes."""
    parts = {}
    for part in PARTITIONS:
        image = work.images(plan, part)
        text_rows = np.load(work.text_path(part)) if job.prompts is not None else None
        parts[part] = PartitionFeatures(image=image, text=text_rows)
    meta = result.meta
    meta["dim"] = int(parts["train"].image.shape[1])
    save_feature_set(result.path, FeatureSet(train=parts["train"], test=parts["test"], meta=meta), dtype=dtype)
    work.remove()
    result.meta = read_meta(result.path)
    return {part: parts[part].image.shape for part in PARTITIONS}


def _load_image(path: Path, transform: ImageTransform, part: str, index: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise FeatureExtractionError(f"cannot read image {path}: {exc}") from exc
    return transform(img, part, index)  # the image's place, which seeds a training transform


def _normalized(t) -> np.ndarray:
    x = t.detach().float().cpu().numpy()
    if not np.all(np.isfinite(x)):
        raise FeatureExtractionError("the model produced NaN/Inf features; check the weights file")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _prefetched(todo: list[Batch], all_paths: dict, transform, executor) -> Iterator[tuple[Batch, Any]]:
    """Batches in ``todo`` order; the next batch's images load on worker threads while the model runs."""
    import torch

    def submit(item):
        part, _, s, e = item
        return [executor.submit(_load_image, p, transform, part, s + k) for k, p in enumerate(all_paths[part][s:e])]

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
