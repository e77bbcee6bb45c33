"""The Trainer: fits a method on a training set and selects a model on the validation set, on Accelerate.

* CPU or GPU chosen automatically; bf16 autocast on GPU (``train.mixed_precision: auto``).
* Data already in memory stays a tensor (on the GPU when it fits) and is batched by index: no per-sample Python
  work and no DataLoader for arrays that are already there.
* Under ``accelerate launch --num_processes N`` every process draws the same seeded permutation and takes its
  share of each global batch (``train.batch_size`` is the global batch), so N processes run the same number of
  optimiser steps on the same samples as one process does.
* Model selection on validation top-1 (``best_val``) or the last epoch; early stopping with ``train.patience``.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from bench.evaluate import EvaluationError, ZeroShotEvaluator
from bench.method import Batch, Method, TrainState
from bench.protocols import EvalSet, TrainSet


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss, or no epoch can be selected; the run fails (never ``completed``)."""


@dataclass
class FitResult:
    curve: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_top1: float | None = None
    selected_epoch: int | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    train_s: float = 0.0
    samples_per_s: float = 0.0
    extras: dict = field(default_factory=dict)
    device: str = "cpu"
    num_processes: int = 1
    mixed_precision: str = "no"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(mixed_precision: str = "auto"):
    """A fresh Accelerator. Accelerate keeps a per-process singleton; resetting it (but not the process group) lets
    several runs with different settings share one process (serial runs, tests)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cuda = torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if mixed_precision == "fp16" and not cuda:
        raise ValueError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not cuda, mixed_precision=mixed_precision)


def build_optimizer(method: Method, cfg: dict) -> torch.optim.Optimizer:
    params = method.param_groups() or [p for p in method.parameters() if p.requires_grad]
    name, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    raise ValueError(f"train.optimizer must be adam, adamw or sgd, not {name!r}")


def build_schedule(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int):
    """Per-step LR multiplier: linear warm-up, then constant, cosine to zero, or step decay per epoch."""
    total = max(1, cfg["epochs"] * steps_per_epoch)
    warmup = cfg["warmup_epochs"] * steps_per_epoch
    kind = cfg["schedule"]
    if kind not in ("constant", "cosine", "step"):
        raise ValueError(f"train.schedule must be constant, cosine or step, not {kind!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if kind == "step":
            return cfg["step_gamma"] ** ((step // steps_per_epoch) // cfg["step_size"])
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class DeviceData:
    """The training set as tensors, on the accelerator when it fits (float16 EEG halves the footprint)."""

    def __init__(self, train: TrainSet, device: torch.device):
        self.device = device
        eeg = torch.from_numpy(np.ascontiguousarray(train.eeg))
        fits = device.type != "cuda" or eeg.numel() * eeg.element_size() < 0.5 * torch.cuda.mem_get_info(device)[0]
        self.eeg = eeg.to(device) if fits else eeg.pin_memory()
        self.row_image = torch.from_numpy(train.row_image).to(device)
        self.row_concept = torch.from_numpy(train.row_concept).to(device)
        self.row_subject = torch.from_numpy(train.row_subject).to(device)
        self.image = torch.from_numpy(train.image).to(device)
        self.text = None if train.text is None else torch.from_numpy(train.text).to(device)

    def __len__(self) -> int:
        return int(self.eeg.shape[0])

    def batch(self, idx: torch.Tensor) -> Batch:
        idx = idx.to(self.device)
        eeg_idx = idx if self.eeg.device == self.device else idx.cpu()
        eeg = self.eeg[eeg_idx].to(self.device, torch.float32, non_blocking=True)
        concept = self.row_concept[idx]
        return Batch(eeg=eeg, image=self.image[self.row_image[idx]], concept=concept,
                     subject=self.row_subject[idx], text=None if self.text is None else self.text[concept])


def check_finite_loss(mean_loss: float, first_bad_step: int, epoch: int, steps_per_epoch: int) -> None:
    """A non-finite training loss ends the run: a diverged model must never be selected or recorded ``completed``."""
    if math.isfinite(mean_loss) and first_bad_step < 0:
        return
    step = first_bad_step if first_bad_step > 0 else steps_per_epoch
    raise DivergenceError(f"training loss is not finite ({mean_loss}) at epoch {epoch}, step {step} of "
                          f"{steps_per_epoch} (global step {(epoch - 1) * steps_per_epoch + step}): the run diverged")


class Trainer:
    def __init__(self, train_cfg: dict, seed: int, evaluator: ZeroShotEvaluator | None = None,
                 progress: bool = True, log_prefix: str = "", on_epoch: Callable[[dict], None] | None = None):
        self.cfg, self.seed = train_cfg, int(seed)
        self.on_epoch = on_epoch  # e.g. a Ray Tune report of the epoch's validation score
        self.evaluator = evaluator or ZeroShotEvaluator(kway=(), galleries=("image",))
        self.progress, self.log_prefix = progress, log_prefix
        self.accelerator = None
        self.result: FitResult | None = None

    def fit(self, method: Method, train: TrainSet, val: EvalSet) -> FitResult:
        for _ in self.epochs(method, train, val):
            pass
        return self.result

    def epochs(self, method: Method, train: TrainSet, val: EvalSet) -> Iterator[dict]:
        """Train epoch by epoch, yielding each epoch's curve entry; ``self.result`` is final once exhausted.

        Lets a caller advance several runs in lockstep (``bench tune`` over several subjects) or stop early.
        """
        cfg = self.cfg
        if cfg.get("num_threads"):
            torch.set_num_threads(int(cfg["num_threads"]))
        seed_everything(self.seed)
        acc = self.accelerator = make_accelerator(cfg["mixed_precision"])
        device = acc.device
        result = self.result = FitResult(device=str(device), num_processes=acc.num_processes,
                                         mixed_precision=acc.mixed_precision)
        method.to(device)
        data = DeviceData(train, device)
        t0 = time.perf_counter()
        if method.closed_form:
            method.fit_closed_form(data.eeg.to(device, torch.float32), data.image[data.row_image], data.row_subject)
            scores = self.evaluator.validate(method, val, device)
            result.curve = [{"epoch": 1, "val_top1": scores["top1"], "val_top5": scores["top5"]}]
            result.best_epoch = result.selected_epoch = result.epochs_run = 1
            result.best_val_top1 = scores["top1"]
            result.train_s = time.perf_counter() - t0
            result.samples_per_s = len(data) / max(result.train_s, 1e-9)
            yield result.curve[0]
            return
        yield from self._fit_gradient(method, data, val, acc, result, t0)

    def _fit_gradient(self, method: Method, data: DeviceData, val: EvalSet, acc, result: FitResult, t0: float
                      ) -> Iterator[dict]:
        cfg = self.cfg
        device, world, rank = acc.device, acc.num_processes, acc.process_index
        n, batch_size, accum = len(data), int(cfg["batch_size"]), int(cfg["grad_accum"])
        steps_per_epoch = max(1, math.ceil(n / batch_size))
        optimizer = build_optimizer(method, cfg)
        schedule = build_schedule(optimizer, cfg, steps_per_epoch)
        model = torch.compile(method) if cfg["compile"] else method
        model, optimizer = acc.prepare(model, optimizer)
        generator = torch.Generator().manual_seed(self.seed)
        state = TrainState(epoch=0, epochs=int(cfg["epochs"]), step=0, steps_per_epoch=steps_per_epoch)
        state.rank, state.world = rank, world
        if world > 1:
            state.all_reduce_mean = lambda t: acc.reduce(t, reduction="mean")
        method.on_train_start(state)

        best_state, best, since_best, seen, step_s = None, -1.0, 0, 0, 0.0
        bar = self._progress_bar(state.epochs, acc.is_main_process)
        for epoch in range(1, state.epochs + 1):
            state.epoch = epoch
            method.train()
            perm = torch.randperm(n, generator=generator)  # identical in every process: same seed, same draws
            loss_sum, log_sums, n_steps = torch.zeros((), device=device), {}, 0
            first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
            t_epoch = time.perf_counter()
            for global_idx in torch.tensor_split(perm, steps_per_epoch):
                local = global_idx[rank::world]
                chunks = [c for c in torch.tensor_split(local, accum) if len(c)]
                for j, chunk in enumerate(chunks):
                    sync = contextlib.nullcontext() if j == len(chunks) - 1 else acc.no_sync(model)
                    with sync, acc.autocast():
                        loss, logs = model(data.batch(chunk), state)
                        acc.backward(loss / len(chunks))
                    loss_sum += loss.detach().float() / len(chunks)
                    bad = ~torch.isfinite(loss.detach()) & (first_bad < 0)
                    first_bad = torch.where(bad, torch.full_like(first_bad, n_steps + 1), first_bad)
                    for k, v in logs.items():
                        log_sums[k] = log_sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v) / len(chunks)
                method.after_backward(state)
                if cfg["grad_clip"]:
                    acc.clip_grad_norm_(method.parameters(), float(cfg["grad_clip"]))
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                n_steps += 1
                seen += len(global_idx)
            entry = {"epoch": epoch, "train_loss": float(loss_sum) / n_steps,  # float() syncs once per epoch
                     **{k: float(v) / n_steps for k, v in log_sums.items()}}
            check_finite_loss(entry["train_loss"], int(first_bad), epoch, steps_per_epoch)
            step_s += time.perf_counter() - t_epoch
            state.last_logs = entry
            for key, value in (method.on_epoch_end(state) or {}).items():
                result.extras.setdefault(key, []).append(value)
            if epoch % int(cfg["val_every"]) == 0 or epoch == state.epochs:
                scores = self._validate(method, val, acc)
                entry.update(val_top1=scores["top1"], val_top5=scores["top5"])
                if scores["top1"] is not None and scores["top1"] > best:
                    best, since_best, result.best_epoch = scores["top1"], 0, epoch
                    if cfg["selection"] == "best_val":
                        best_state = copy.deepcopy({k: v.detach().cpu() for k, v in method.state_dict().items()})
                else:
                    since_best += int(cfg["val_every"])
            result.curve.append(entry)
            if self.on_epoch is not None and acc.is_main_process:
                self.on_epoch(entry)
            if bar is not None:
                val_top1 = entry.get("val_top1")
                bar.set_postfix(loss=f"{entry['train_loss']:.3f}", val_top1="-" if val_top1 is None else f"{val_top1:.1f}")
                bar.update(1)
            result.epochs_run = epoch
            yield entry
            if cfg["patience"] is not None and since_best >= int(cfg["patience"]):
                result.stopped_early = True
                break
        if bar is not None:
            bar.close()
        self._select(method, cfg["selection"], best_state, result)
        result.best_val_top1 = best
        result.train_s = time.perf_counter() - t0
        result.samples_per_s = seen / max(step_s, 1e-9)  # optimisation steps only, validation excluded
        method.eval()

    def _validate(self, method: Method, val: EvalSet, acc) -> dict:
        """Validation scores; ``None`` scores where the embeddings are not finite (never selected)."""
        try:
            scores = self.evaluator.validate(method, val, acc.device)
        except EvaluationError as exc:
            scores = {"top1": None, "top5": None, "error": str(exc)}
        if acc.num_processes > 1:  # batch-norm statistics differ per rank: rank 0 decides selection and stopping
            from accelerate.utils import broadcast_object_list

            scores = broadcast_object_list([scores], from_process=0)[0]
        return scores

    @staticmethod
    def _select(method: Method, selection: str, best_state: dict | None, result: FitResult) -> None:
        """Load the selected epoch's weights; refuse to select an epoch whose validation output was not finite."""
        if selection == "best_val":
            if best_state is None:
                raise DivergenceError(f"no epoch of {result.epochs_run} produced finite validation embeddings: "
                                      f"nothing can be selected")
            method.load_state_dict(best_state)
            result.selected_epoch = result.best_epoch
        elif selection == "last":
            if result.curve[-1].get("val_top1") is None:
                raise DivergenceError(f"the last epoch ({result.epochs_run}) produced non-finite validation "
                                      f"embeddings; train.selection=last cannot select it")
            result.selected_epoch = result.epochs_run
        else:
            raise ValueError(f"train.selection must be best_val or last, not {selection!r}")

    def _progress_bar(self, epochs: int, main_process: bool):
        if not (self.progress and main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=epochs, desc=f"{self.log_prefix}epochs", unit="ep", leave=False)
