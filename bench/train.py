"""The Trainer: fits a method on a training set and selects a model on the validation set, on Accelerate.

* CPU or GPU chosen automatically; bf16 autocast on GPU (``train.mixed_precision: auto``).
* Data already in memory stays a tensor (on the GPU when it fits) and is batched by index: no per-sample Python
  work and no DataLoader for arrays that are already there.
* Under ``accelerate launch --num_processes N`` every process draws the same seeded permutation and takes its
  share of each global batch (``train.batch_size`` is the global batch), so N processes run the same number of
  optimiser steps on the same samples as one process does.
* Model selection on validation top-1 (``best_val``) or the last epoch; early stopping with ``train.patience`` on
  validation top-1 or on the epoch's mean training loss (``train.stop_on``), an improvement counting only beyond
  ``train.min_delta`` (as Lightning's EarlyStopping). Without a validation set (``protocol.validation: none``, UBP
  intra) there is no validation pass and the last epoch is selected.
* One epoch is steps of :meth:`Trainer._optimizer_step` (one global batch in ``train.grad_accum`` chunks); the
  Method API (``bench/method.py``) says which hook runs per chunk, per step and per epoch.
* Given a :class:`bench.checkpoint.RunCheckpoint`, the state of the fit is written after every finished epoch and a
  rerun resumes from it at the next epoch, ending bit for bit as an uninterrupted fit (:meth:`Trainer._resume`).
"""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from bench.allocator import keep_freed_memory
from bench.checkpoint import CheckpointError, RunCheckpoint, capture_rng, read_checkpoint, restore_rng
from bench.evaluate import EvaluationError, ZeroShotEvaluator
from bench.gather import StepGather
from bench.method import Batch, Method, TrainState
from bench.protocols import EvalSet, TrainSet

log = logging.getLogger(__name__)


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
    checkpoint_s: float = 0.0  # time spent writing checkpoints (bench/checkpoint.py), inside train_s
    resumed: list[dict] = field(default_factory=list)  # each resume of this fit: epoch, checkpoint, when


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


def build_optimizer(method: Method, cfg: dict, fused: bool = True) -> torch.optim.Optimizer:
    """The recipe's optimiser over the method's parameter groups. Adam and AdamW run torch's fused kernel where every
    parameter allows it: one pass over each tensor instead of the ~10 tensor ops of torch's default for-loop form on
    the CPU (MCDB's 6.8 M parameters on one thread: 49 → 14 ms a step), the same update up to float32 rounding.
    ``fused=False`` keeps torch's default, as code that calls ``torch.optim.Adam(params, lr, betas)`` gets it."""
    params = method.param_groups() or [p for p in method.parameters() if p.requires_grad]
    name, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    kernel = {"fused": True} if fused and _fusable(method) else {}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd, **kernel)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd, **kernel)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    raise ValueError(f"train.optimizer must be adam, adamw or sgd, not {name!r}")


def _fusable(method: Method) -> bool:
    """torch's fused Adam takes floating-point tensors on the CPU and the GPUs the harness runs on (the trained
    parameters: every param group's are among them)."""
    trained = (p for p in method.parameters() if p.requires_grad)
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in trained)


@contextlib.contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, scale: dict[str, float]) -> Iterator[None]:
    """The named param groups' learning rates multiplied for one step (``Method.after_backward``), then restored."""
    groups = [g for g in optimizer.param_groups if g.get("name") in scale]
    if len(groups) != len(scale):
        unknown = sorted(set(scale) - {g.get("name") for g in groups})
        raise ValueError(f"after_backward scaled param groups the optimiser does not have: {unknown}")
    saved = [g["lr"] for g in groups]
    for g in groups:
        g["lr"] = g["lr"] * scale[g["name"]]
    try:
        yield
    finally:
        for g, lr in zip(groups, saved):
            g["lr"] = lr


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


@dataclass
class EpochTotals:
    """One epoch's running sums, kept on the device so that the epoch syncs with the host once."""

    loss_sum: torch.Tensor
    first_bad: torch.Tensor  # the first step (1-based) whose loss was not finite; -1 while none was
    log_sums: dict = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    row_loss_sum: torch.Tensor | None = None  # each chunk's loss × its rows (this process's): the per-row mean
    rows: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochTotals":
        return cls(loss_sum=torch.zeros((), device=device),
                   first_bad=torch.full((), -1, dtype=torch.long, device=device),
                   row_loss_sum=torch.zeros((), device=device))

    def add_chunk(self, loss: torch.Tensor, logs: dict, n_chunks: int, rows: int = 0) -> None:
        """A chunk's loss and logs, weighted as its backward pass was (1 / chunks), into the current step; and its
        loss weighted by its ``rows`` into the per-row sum."""
        self.loss_sum += loss.detach().float() / n_chunks
        if self.row_loss_sum is not None:
            self.row_loss_sum += loss.detach().float() * rows
            self.rows += rows
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, self.steps + 1), self.first_bad)
        for k, v in logs.items():
            self.log_sums[k] = self.log_sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else v) / n_chunks

    def entry(self, epoch: int) -> dict:
        """The epoch's curve entry: mean training loss and mean logs per step (``float()`` syncs, once per epoch)."""
        return {"epoch": epoch, "train_loss": float(self.loss_sum) / self.steps,
                **{k: float(v) / self.steps for k, v in self.log_sums.items()}}


@dataclass
class Selection:
    """Model selection across epochs (the best validation top-1 so far and its weights) and early stopping (the
    watched signal's reference value and the epochs since it last improved by more than ``train.min_delta``)."""

    best: float = -1.0
    best_state: dict | None = None
    since_best: int = 0               # epochs without an improvement of the watched signal
    reference: float | None = None    # the watched signal's value at its last improvement
    validated: bool = False           # whether any validation pass ran


@dataclass
class GradientFit:
    """What every step of one gradient fit shares."""

    method: Method
    model: torch.nn.Module  # the method as the accelerator wrapped it (DDP, torch.compile)
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    data: DeviceData
    state: TrainState
    generator: torch.Generator  # draws each epoch's permutation, the same in every process
    accum: int
    acc: object  # the Accelerator
    gathers: bool = True  # False once a recording pass saw no ``state.gather`` call: skip that pass from then on


@dataclass
class EpochClock:
    """Throughput bookkeeping across epochs (and across a resume): samples seen and seconds spent in optimisation
    steps, and the fit's start (moved back by the time a resumed fit had run before its checkpoint)."""

    t0: float
    seen: int = 0
    step_s: float = 0.0


def rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def set_rng_state(saved: tuple) -> None:
    torch.set_rng_state(saved[0])
    if saved[1] is not None:
        torch.cuda.set_rng_state_all(saved[1])


class Trainer:
    """Fits a method: per epoch :meth:`_train_epoch` (steps of :meth:`_optimizer_step`), then the method's epoch hook,
    :meth:`_validate_and_select` and :meth:`_should_stop`; :meth:`_finish` loads the selected weights."""

    def __init__(self, train_cfg: dict, seed: int, evaluator: ZeroShotEvaluator | None = None,
                 progress: bool = True, log_prefix: str = "", on_epoch: Callable[..., None] | None = None,
                 checkpoint: RunCheckpoint | None = None):
        self.cfg, self.seed = train_cfg, int(seed)
        #: called on the main process after each epoch as ``on_epoch(entry, checkpoint, resumed)``: the curve entry,
        #: the checkpoint file written for it (or None) and, on the first epoch after a resume, the line saying where
        #: it resumed (else None); e.g. a Ray Tune report of the epoch's validation score and checkpoint
        self.on_epoch = on_epoch
        self.checkpoint = checkpoint  # None: no checkpoints, no resume (bench tune, bench perf)
        self.resumed_line: str | None = None
        self.evaluator = evaluator or ZeroShotEvaluator(kway=(), galleries=("image",))
        self.progress, self.log_prefix = progress, log_prefix
        self.accelerator = None
        self.result: FitResult | None = None

    def fit(self, method: Method, train: TrainSet, val: EvalSet | None) -> FitResult:
        """``val`` None: no validation pass at all (``protocol.validation: none``); the last epoch is selected."""
        for _ in self.epochs(method, train, val):
            pass
        return self.result

    def epochs(self, method: Method, train: TrainSet, val: EvalSet | None) -> Iterator[dict]:
        """Train epoch by epoch, yielding each epoch's curve entry; ``self.result`` is final once exhausted.

        Lets a caller advance several runs in lockstep (``bench tune`` over several subjects) or stop early.
        """
        cfg = self.cfg
        keep_freed_memory()  # the steps' large activations reuse pages instead of faulting them in again
        if cfg.get("num_threads"):
            torch.set_num_threads(int(cfg["num_threads"]))
        seed_everything(self.seed)
        acc = self.accelerator = make_accelerator(cfg["mixed_precision"])
        self.result = FitResult(device=str(acc.device), num_processes=acc.num_processes,
                                mixed_precision=acc.mixed_precision)
        method.to(acc.device)
        data = DeviceData(train, acc.device)
        t0 = time.perf_counter()
        if method.closed_form:
            yield self._fit_closed_form(method, data, val, t0)
            return
        yield from self._fit_gradient(self._prepare(method, data, acc), val, t0)

    def _fit_closed_form(self, method: Method, data: DeviceData, val: EvalSet | None, t0: float) -> dict:
        device, result = self.accelerator.device, self.result
        method.fit_closed_form(data.eeg.to(device, torch.float32), data.image[data.row_image], data.row_subject)
        result.selected_epoch = result.epochs_run = 1
        if val is None:
            result.curve = [{"epoch": 1}]
        else:
            scores = self.evaluator.validate(method, val, device)
            result.curve = [{"epoch": 1, "val_top1": scores["top1"], "val_top5": scores["top5"]}]
            result.best_epoch, result.best_val_top1 = 1, scores["top1"]
        result.train_s = time.perf_counter() - t0
        result.samples_per_s = len(data) / max(result.train_s, 1e-9)
        return result.curve[0]

    def _prepare(self, method: Method, data: DeviceData, acc) -> GradientFit:
        """Optimiser, schedule and the accelerator's wrapping; then the method's ``on_train_start`` hook."""
        cfg = self.cfg
        steps_per_epoch = max(1, math.ceil(len(data) / int(cfg["batch_size"])))
        optimizer = build_optimizer(method, cfg)
        schedule = build_schedule(optimizer, cfg, steps_per_epoch)
        model = torch.compile(method) if cfg["compile"] else method
        model, optimizer = acc.prepare(model, optimizer)
        generator = torch.Generator().manual_seed(self.seed)
        state = TrainState(epoch=0, epochs=int(cfg["epochs"]), step=0, steps_per_epoch=steps_per_epoch,
                           rank=acc.process_index, world=acc.num_processes)
        if data.text is not None:  # the concepts the training rows use (held-out validation concepts are not)
            state.concept_ids = torch.unique(data.row_concept)
            state.concept_text = data.text[state.concept_ids]
        if acc.num_processes > 1:
            state.all_reduce_mean = lambda t: acc.reduce(t, reduction="mean")
        method.on_train_start(state)
        return GradientFit(method=method, model=model, optimizer=optimizer, schedule=schedule, data=data,
                           state=state, generator=generator, accum=int(cfg["grad_accum"]), acc=acc)

    def _fit_gradient(self, fit: GradientFit, val: EvalSet | None, t0: float) -> Iterator[dict]:
        result, selection, clock = self.result, Selection(), EpochClock(t0)
        start = self._resume(fit, selection, clock)  # 1, or the epoch after the checkpoint's
        bar = self._progress_bar(fit.state.epochs, fit.acc.is_main_process, done=start - 1)
        for epoch in range(start, fit.state.epochs + 1):
            entry = self._epoch(fit, val, epoch, selection, clock)
            result.stopped_early = self._should_stop(selection)
            saved = self._save_checkpoint(fit, selection, clock, epoch)
            self._report(entry, bar, fit.acc.is_main_process, saved)
            yield entry
            if result.stopped_early:
                break
        if bar is not None:
            bar.close()
        self._finish(fit.method, selection, clock.t0, clock.seen, clock.step_s)

    def _epoch(self, fit: GradientFit, val: EvalSet | None, epoch: int, selection: Selection,
               clock: EpochClock) -> dict:
        """One epoch: its steps, the method's epoch hook, the stopping signal, validation and selection; returns its
        curve entry (appended to the curve)."""
        result = self.result
        t_epoch = time.perf_counter()
        entry, samples = self._train_epoch(fit, epoch)
        clock.seen, clock.step_s = clock.seen + samples, clock.step_s + time.perf_counter() - t_epoch
        fit.state.last_logs = entry
        for key, value in (fit.method.on_epoch_end(fit.state) or {}).items():
            result.extras.setdefault(key, []).append(value)
        if self._stop_on() == "train_loss":  # decided before validation, so that a stopping epoch is validated
            self._watch(selection, entry["train_loss_per_row"], higher_is_better=False, epochs=1)
        if val is not None and (epoch % int(self.cfg["val_every"]) == 0 or epoch == fit.state.epochs
                                or self._should_stop(selection)):
            self._validate_and_select(fit, val, entry, selection)
        result.curve.append(entry)
        result.epochs_run = epoch
        return entry

    # --- checkpoints (bench/checkpoint.py) ---------------------------------------------------------------------------
    def _save_checkpoint(self, fit: GradientFit, selection: Selection, clock: EpochClock, epoch: int) -> Path | None:
        """After a finished epoch (every ``train.checkpoint_every`` and the last one): the fit's whole state, written
        by the main process, with every process's RNG states. Returns the file written (main process), else None."""
        ckpt = self.checkpoint
        if ckpt is None or not ckpt.due(epoch, final=epoch == fit.state.epochs or self.result.stopped_early):
            return None
        rngs = [capture_rng()]
        if fit.acc.num_processes > 1:  # each process draws its own dropout masks: keep every one's generators
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        if not fit.acc.is_main_process:
            return None
        t = time.perf_counter()
        path = ckpt.save(self._payload(fit, selection, clock, epoch, rngs))
        self.result.checkpoint_s += time.perf_counter() - t
        return path

    def _payload(self, fit: GradientFit, selection: Selection, clock: EpochClock, epoch: int, rngs: list) -> dict:
        result, state = self.result, fit.state
        return {
            "epoch": epoch, "epochs": state.epochs, "world": fit.acc.num_processes,
            "method": fit.method.state_dict(), "method_state": fit.method.checkpoint_state(),
            "optimizer": fit.optimizer.state_dict(), "schedule": fit.schedule.state_dict(),
            "generator": fit.generator.get_state(), "rng": rngs, "gathers": fit.gathers,
            "train_state": {"step": state.step, "epoch": state.epoch, "last_logs": state.last_logs},
            "selection": {"best": selection.best, "best_state": selection.best_state,
                          "since_best": selection.since_best, "reference": selection.reference,
                          "validated": selection.validated},
            "result": {"curve": result.curve, "extras": result.extras, "best_epoch": result.best_epoch,
                       "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
                       "checkpoint_s": result.checkpoint_s, "resumed": result.resumed},
            "clock": {"seen": clock.seen, "step_s": clock.step_s, "elapsed_s": time.perf_counter() - clock.t0},
        }

    def _resume(self, fit: GradientFit, selection: Selection, clock: EpochClock) -> int:
        """Restore the fit from its checkpoint, if there is one this run may use; the first epoch still to run."""
        payload = self._load_checkpoint(fit)
        if payload is None:
            return 1
        self._restore(fit, selection, clock, payload)
        epoch, epochs, path = payload["epoch"], fit.state.epochs, self.checkpoint.path
        start = epochs + 1 if self.result.stopped_early else epoch + 1
        self.result.resumed.append({"epoch": start, "checkpoint": str(path),
                                    "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        where = f"at epoch {start} of {epochs}" if start <= epochs else f"after its last epoch ({epoch} of {epochs})"
        self.resumed_line = f"resumed {self.checkpoint.label} {where} from {path}"
        if fit.acc.is_main_process:
            log.warning("%s", self.resumed_line)
        return start

    def _load_checkpoint(self, fit: GradientFit) -> dict | None:
        """The checkpoint payload to resume from, or None. The main process decides (a file of another run, other
        code, another shape, truncated or corrupt is named and not used); under DDP every other process then reads
        the same file, and all wait until each has read it, so the main process cannot overwrite it before."""
        ckpt, acc = self.checkpoint, fit.acc
        if ckpt is None:
            return None
        payload = ckpt.load(acc.num_processes) if acc.is_main_process else None
        if payload is not None and (why := self._misfit(fit, payload)):
            log.warning("checkpoint %s does not fit this run (%s): not used; %s starts from epoch 1", ckpt.path, why,
                        ckpt.label)
            payload = None
        if acc.num_processes == 1:
            return payload
        from accelerate.utils import broadcast_object_list

        epoch = broadcast_object_list([None if payload is None else payload["epoch"]], from_process=0)[0]
        if epoch is not None and not acc.is_main_process:
            payload = read_checkpoint(ckpt.path)
            if payload["epoch"] != epoch:
                raise CheckpointError(f"checkpoint {ckpt.path} changed while the processes read it (epoch "
                                      f"{payload['epoch']}, the main process read {epoch})")
        acc.wait_for_everyone()
        return payload if epoch is not None else None

    @staticmethod
    def _misfit(fit: GradientFit, payload: dict) -> str | None:
        """Why a checkpoint of this spec and code cannot be restored into this fit (checked before anything is
        changed, so a checkpoint is never loaded half); None when it fits."""
        try:
            weights, saved = fit.method.state_dict(), payload["method"]
            if set(saved) != set(weights) or any(saved[k].shape != weights[k].shape for k in weights):
                return "its weights have other names or shapes"
            groups = payload["optimizer"]["param_groups"]
            if [len(g["params"]) for g in groups] != [len(g["params"]) for g in fit.optimizer.param_groups]:
                return "its optimiser has other parameter groups"
            if payload["epochs"] != fit.state.epochs or len(payload["rng"]) != fit.acc.num_processes:
                return "another number of epochs or processes"
            missing = {"schedule", "generator", "gathers", "train_state", "selection", "result", "clock"} - set(payload)
        except (KeyError, TypeError, AttributeError) as exc:
            return f"it lacks {exc}"
        return f"it lacks {sorted(missing)}" if missing else None

    def _restore(self, fit: GradientFit, selection: Selection, clock: EpochClock, payload: dict) -> None:
        """Everything the rest of the fit depends on, back as it was after the checkpoint's epoch; the RNG states
        last, so that nothing restored after them draws from them."""
        fit.method.load_state_dict(payload["method"])
        fit.method.load_checkpoint_state(payload["method_state"])
        fit.optimizer.load_state_dict(payload["optimizer"])
        fit.schedule.load_state_dict(payload["schedule"])
        fit.generator.set_state(payload["generator"])
        fit.gathers = payload["gathers"]
        state = payload["train_state"]
        fit.state.step, fit.state.epoch, fit.state.last_logs = state["step"], state["epoch"], state["last_logs"]
        for key, value in payload["selection"].items():
            setattr(selection, key, value)
        result = payload["result"]
        self.result.curve, self.result.extras = result["curve"], result["extras"]
        self.result.best_epoch, self.result.epochs_run = result["best_epoch"], result["epochs_run"]
        self.result.stopped_early, self.result.checkpoint_s = result["stopped_early"], result["checkpoint_s"]
        self.result.resumed = list(result["resumed"])
        clock.seen, clock.step_s = payload["clock"]["seen"], payload["clock"]["step_s"]
        clock.t0 = time.perf_counter() - payload["clock"]["elapsed_s"]
        restore_rng(payload["rng"][fit.acc.process_index])

    def _stop_on(self) -> str:
        return self.cfg.get("stop_on", "val_top1")

    def _train_epoch(self, fit: GradientFit, epoch: int) -> tuple[dict, int]:
        """One pass over the training set; its curve entry and the number of samples it used. Under
        ``train.stop_on: train_loss`` the entry also holds ``train_loss_per_row``, the signal watched: the epoch's
        loss averaged over its rows in every process (each step weighted by its batch, as Lightning's epoch mean)."""
        fit.state.epoch = epoch
        fit.method.train()
        perm = torch.randperm(len(fit.data), generator=fit.generator)  # identical in every process: same seed, draws
        totals = EpochTotals.zeros(fit.acc.device)
        for global_idx in torch.tensor_split(perm, fit.state.steps_per_epoch):
            self._optimizer_step(fit, global_idx, totals)
        entry = totals.entry(epoch)
        check_finite_loss(entry["train_loss"], int(totals.first_bad), epoch, fit.state.steps_per_epoch)
        if self._stop_on() == "train_loss":
            sums = torch.stack([totals.row_loss_sum, torch.tensor(float(totals.rows), device=fit.acc.device)])
            if fit.acc.num_processes > 1:
                sums = fit.acc.reduce(sums, reduction="sum")
            entry["train_loss_per_row"] = float(sums[0]) / max(float(sums[1]), 1.0)
        return entry, totals.samples

    def _optimizer_step(self, fit: GradientFit, global_idx: torch.Tensor, totals: EpochTotals) -> None:
        """One optimiser step on one global batch: this process's share, in ``grad_accum`` chunks, each calling
        ``training_loss`` and backward (DDP syncs on the last); then ``after_backward``, clipping, the update.

        ``state.gather`` extends a chunk's rows to the whole step's (``bench/gather.py``); with several chunks a
        recording pass (:meth:`_record_step`) first caches every chunk's gathered rows."""
        acc, state = fit.acc, fit.state
        world = acc.num_processes
        local = global_idx[acc.process_index::world]
        chunks = [c for c in torch.tensor_split(local, fit.accum) if len(c)]
        state.n_chunks, state.chunk_logs = len(chunks), []
        gather = StepGather(acc.process_index, [len(global_idx[r::world]) for r in range(world)], len(chunks))
        state.gather = gather
        # only a recording pass needs every chunk's batch at once; otherwise each is assembled when its turn comes,
        # so accumulation keeps one chunk of inputs on the device
        batches = [fit.data.batch(c) for c in chunks] if len(chunks) > 1 and fit.gathers else None
        rng = self._record_step(fit, gather, batches) if batches else None
        for j, chunk in enumerate(chunks):
            state.chunk = j
            gather.begin(j, recording=False)
            if rng is not None:  # the chunk draws the dropout masks (and noise) its recorded rows were made with
                set_rng_state(rng[j])
            sync = contextlib.nullcontext() if j == len(chunks) - 1 else acc.no_sync(fit.model)
            with sync, acc.autocast():
                loss, logs = fit.model(batches[j] if batches else fit.data.batch(chunk), state)
                acc.backward(loss / len(chunks))
            state.chunk_logs.append(logs)
            totals.add_chunk(loss, logs, len(chunks), len(chunk))
        lr_scale = fit.method.after_backward(state) or {}
        if self.cfg["grad_clip"]:
            acc.clip_grad_norm_(fit.method.parameters(), float(self.cfg["grad_clip"]))
        with scaled_lr(fit.optimizer, lr_scale):
            fit.optimizer.step()
        fit.schedule.step()
        fit.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        totals.steps += 1
        totals.samples += len(global_idx)

    @staticmethod
    def _record_step(fit: GradientFit, gather: StepGather, batches: list[Batch]) -> list[tuple]:
        """GradCache's first pass: every chunk's ``training_loss`` under no_grad with ``state.recording`` set, its
        output discarded, so that ``state.gather`` caches each chunk's rows. Returns the RNG state at each chunk's
        start (for its gradient pass); the buffers are put back, so BatchNorm statistics move once per chunk."""
        buffers = [b.detach().clone() for b in fit.method.buffers()]
        states = []
        fit.state.recording = True
        try:
            with torch.no_grad(), fit.acc.autocast():
                for j, batch in enumerate(batches):
                    states.append(rng_state())
                    fit.state.chunk = j
                    gather.begin(j, recording=True)
                    fit.method(batch, fit.state)
        finally:
            fit.state.recording = False
        with torch.no_grad():
            for b, saved in zip(fit.method.buffers(), buffers):
                b.copy_(saved)
        fit.gathers = gather.used
        return states

    def _validate_and_select(self, fit: GradientFit, val: EvalSet, entry: dict, selection: Selection) -> None:
        """Validation scores into ``entry``; an epoch better than every earlier one becomes the best (its weights kept
        for ``best_val``). Non-finite validation output scores ``None`` and never becomes the best."""
        scores = self._validate(fit.method, val, fit.acc)
        entry.update(val_top1=scores["top1"], val_top5=scores["top5"])
        selection.validated = True
        if scores["top1"] is not None and scores["top1"] > selection.best:
            selection.best, self.result.best_epoch = scores["top1"], entry["epoch"]
            if self.cfg["selection"] == "best_val":
                selection.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in fit.method.state_dict().items()})
        if self._stop_on() == "val_top1":
            self._watch(selection, scores["top1"], higher_is_better=True, epochs=int(self.cfg["val_every"]))

    def _watch(self, selection: Selection, value: float | None, higher_is_better: bool, epochs: int) -> None:
        """Early stopping's bookkeeping: ``value`` improves on the reference only by more than ``train.min_delta``
        (a non-finite validation score never does); otherwise ``epochs`` more epochs passed without improvement."""
        delta = float(self.cfg.get("min_delta", 0.0))
        gain = None if value is None or selection.reference is None else (
            value - selection.reference if higher_is_better else selection.reference - value)
        if value is not None and (gain is None or gain > delta):
            selection.reference, selection.since_best = value, 0
        else:
            selection.since_best += epochs

    def _should_stop(self, selection: Selection) -> bool:
        """Early stopping: ``train.patience`` epochs without the watched signal improving (``train.stop_on``)."""
        return self.cfg["patience"] is not None and selection.since_best >= int(self.cfg["patience"])

    def _report(self, entry: dict, bar, main_process: bool, saved: Path | None = None) -> None:
        if self.on_epoch is not None and main_process:
            self.on_epoch(entry, saved, self.resumed_line)
            self.resumed_line = None  # said once, with the first epoch after the resume
        if bar is not None:
            val_top1 = entry.get("val_top1")
            bar.set_postfix(loss=f"{entry['train_loss']:.3f}", val_top1="-" if val_top1 is None else f"{val_top1:.1f}")
            bar.update(1)

    def _finish(self, method: Method, selection: Selection, t0: float, seen: int, step_s: float) -> None:
        result = self.result
        self._select(method, self.cfg["selection"], selection.best_state, result, selection.validated)
        result.best_val_top1 = selection.best if selection.validated else None
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
    def _select(method: Method, selection: str, best_state: dict | None, result: FitResult,
                validated: bool = True) -> None:
        """Load the selected epoch's weights; refuse to select an epoch whose validation output was not finite."""
        if selection == "best_val":
            if not validated:
                raise ValueError("train.selection=best_val needs a validation set; without one (protocol.validation: "
                                 "none) select the last epoch")
            if best_state is None:
                raise DivergenceError(f"no epoch of {result.epochs_run} produced finite validation embeddings: "
                                      f"nothing can be selected")
            method.load_state_dict(best_state)
            result.selected_epoch = result.best_epoch
        elif selection == "last":
            if validated and result.curve[-1].get("val_top1") is None:
                raise DivergenceError(f"the last epoch ({result.epochs_run}) produced non-finite validation "
                                      f"embeddings; train.selection=last cannot select it")
            result.selected_epoch = result.epochs_run
        else:
            raise ValueError(f"train.selection must be best_val or last, not {selection!r}")

    def _progress_bar(self, epochs: int, main_process: bool, done: int = 0):
        if not (self.progress and main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=epochs, initial=done, desc=f"{self.log_prefix}epochs", unit="ep", leave=False)
