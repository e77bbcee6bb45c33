"""The Method API: what a method supplies, and nothing else.

A method is an ``nn.Module`` with

* an EEG encoder: :meth:`Method.encode_eeg` ``(eeg (B, C, T), subject (B,) or None) -> (B, D)``;
* optional heads/adapters over the frozen targets: :meth:`encode_image`, :meth:`encode_text` (identity by default);
* a loss: :meth:`training_loss` on one :class:`Batch`;
* optional hooks: :meth:`on_train_start`, :meth:`after_backward` (gradients are there, the optimiser has not
  stepped; may return per-group learning-rate multipliers for that step), :meth:`on_epoch_end` (may return
  numbers to log into the run record's ``extras``);
* if it keeps state between epochs outside its parameters and buffers (Python attributes, counters, seeds):
  :meth:`checkpoint_state` / :meth:`load_checkpoint_state`, so that a killed run resumes exactly
  (``bench/checkpoint.py``).

When each is called, in a gradient fit (one optimiser *step* per global batch of ``train.batch_size`` rows; each
process takes its share and splits it into ``train.grad_accum`` *chunks*):

* :meth:`on_train_start` once, before the first step;
* :meth:`training_loss` once per chunk, with ``state.chunk`` (0-based) of ``state.n_chunks`` and ``state.step`` the
  step it belongs to; the trainer divides the loss by ``n_chunks`` before backward and averages the logs the same
  way into the epoch's curve. It needs no per-step memory: what a step-level hook needs, it returns in its logs.
  ``state.gather`` extends a per-row tensor to the whole step's rows (all chunks, all processes); with several chunks
  it runs first once per chunk under no_grad with ``state.recording`` set (output discarded; ``bench/gather.py``);
* :meth:`after_backward` once per step, after every chunk's backward (gradients summed over the chunks and, under
  DDP, all-reduced), before gradient clipping and the optimiser step; ``state.chunk_logs`` holds the logs each
  chunk's ``training_loss`` returned, in chunk order, values as returned (tensors not detached or averaged);
* :meth:`on_epoch_end` once per epoch after its last step, before validation; ``state.last_logs`` is the epoch's
  curve entry (mean training loss and logs).

Methods without gradient training (closed-form ridge) set ``closed_form = True`` and implement
:meth:`fit_closed_form`, which receives the training set and nothing else.

The harness owns seeds, devices, data splits, validation, model selection, test evaluation and output. A method
never receives a split, a path or a dataset: only batches of training data, and at evaluation time the EEG and
targets it must embed.

The encoders must be **per-sample**: each output row of ``encode_eeg``/``encode_image``/``encode_text`` depends only on
its own input row and the trained weights, never on the rest of the batch, earlier calls or the gallery. The
evaluator embeds the galleries before the queries, then checks the rule by embedding everything again with a copy of
the method, in other batches (of 1, 7 and 13) and another order, and fails the run on any difference (no
transduction).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from bench.ablation import FULL_LABEL


@dataclass(frozen=True)
class DataInfo:
    """Shapes and metadata a method may build itself from."""

    n_chans: int
    n_times: int
    sfreq: float
    ch_names: tuple[str, ...]
    feature_dim: int
    n_subjects: int
    n_train_concepts: int
    has_text: bool


@dataclass
class Batch:
    """One training batch, already on the method's device. ``text`` rows are the batch rows' concept texts."""

    eeg: torch.Tensor               # (B, C, T) float
    image: torch.Tensor             # (B, D) target features of the seen images
    concept: torch.Tensor           # (B,) training-concept index
    subject: torch.Tensor | None    # (B,) 0-based subject index, None where the protocol hides it
    text: torch.Tensor | None = None  # (B, D) or None when the data has no text features


@dataclass
class LossOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainState:
    """What hooks may read: where training is (see the module docstring for when each hook runs)."""

    epoch: int                      # 1-based
    epochs: int
    step: int                       # optimiser steps taken before this one, over the whole fit
    steps_per_epoch: int
    last_logs: dict[str, float] = field(default_factory=dict)  # the last finished epoch's curve entry
    chunk: int = 0                  # training_loss: this chunk's index within the step
    n_chunks: int = 1               # chunks in this step (train.grad_accum, fewer when the batch is short)
    #: after_backward: the logs of this step's chunks, in order (filled chunk by chunk during the step)
    chunk_logs: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0
    world: int = 1
    #: average a tensor over processes (identity in one process): hooks that derive numbers from the local batch
    #: (e.g. balance coefficients) must agree across processes or the replicas drift apart
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    #: training_loss: a per-row tensor of this chunk → the same rows over the whole step and every process, gradient
    #: through this chunk's rows (identity in one process without accumulation); contrastive losses take their
    #: negatives from it, so N processes or chunks train like one (bench/gather.py)
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    #: True while training_loss runs in the no-grad recording pass of an accumulated step: its output is discarded,
    #: so skip side effects (e.g. accumulating statistics in the method)
    recording: bool = False
    #: the text features of every training concept (U, D), on the device, set once before ``on_train_start``, for a
    #: loss over all concept texts rather than the batch's; row u is concept ``concept_ids[u]`` (as in Batch.concept).
    #: Held-out validation concepts are not in it. None when the data has no text features
    concept_text: torch.Tensor | None = None
    concept_ids: torch.Tensor | None = None


class Method(nn.Module):
    """Base class for registered methods. Subclasses declare ``defaults`` (their ``method:`` config section)."""

    defaults: ClassVar[dict[str, Any]] = {}
    requires_text: ClassVar[bool] = False
    closed_form: ClassVar[bool] = False
    #: the variants `bench run --ablation` adds, in the order they add components: label → dotted config overrides
    ablations: ClassVar[dict[str, dict[str, Any]]] = {}
    #: the label of the full method's row, after its variants, in the ablation table
    ablation_full_label: ClassVar[str] = FULL_LABEL

    def __init__(self, info: DataInfo, **hparams: Any):
        super().__init__()
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown hyper-parameters {sorted(unknown)}; "
                            f"it declares {sorted(self.defaults)}")
        if self.requires_text and not info.has_text:
            raise ValueError(f"{type(self).__name__} needs text features, but the feature file has none "
                             f"(extract them with an open_clip model: bench features --model open_clip:...)")
        self.info = info
        self.hparams = {**self.defaults, **hparams}

    # --- the model ------------------------------------------------------------------------------------------------
    def encode_eeg(self, eeg: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def encode_text(self, features: torch.Tensor) -> torch.Tensor:
        return features

    # --- training -------------------------------------------------------------------------------------------------
    def forward(self, batch: Batch, state: TrainState) -> tuple[torch.Tensor, dict]:
        """The trainer calls the module (so DDP wrappers see a forward pass); this runs :meth:`training_loss`."""
        out = self.training_loss(batch, state)
        return out.loss, out.logs

    def training_loss(self, batch: Batch, state: TrainState) -> LossOutput:
        """The loss of one accumulation chunk (``state.chunk`` of ``state.n_chunks``) of the step ``state.step``."""
        raise NotImplementedError

    def fit_closed_form(self, eeg: torch.Tensor, image: torch.Tensor, subject: torch.Tensor | None) -> None:
        raise NotImplementedError

    def on_train_start(self, state: TrainState) -> None:
        pass

    def after_backward(self, state: TrainState) -> dict[str, float] | None:
        """Once per optimiser step, gradients summed over its chunks; ``state.chunk_logs`` are those chunks' logs.

        May return ``{group name: multiplier}``: the trainer multiplies those :meth:`param_groups`' learning rates for
        this step's ``optimizer.step()`` only (an update scale that Adam does not normalise away, as it does a
        gradient scale)."""

    def on_epoch_end(self, state: TrainState) -> dict[str, float] | None:
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs besides the weights (``state_dict``): state the method keeps between epochs as
        Python attributes. Written into the run's checkpoint after each epoch (after :meth:`on_epoch_end` and
        validation); tensors, numbers, strings, lists and dicts only (checkpoints load with ``weights_only``)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned; called on resume after :meth:`on_train_start` and after
        the weights are loaded, before the next epoch."""

    def param_groups(self) -> list[dict] | None:
        """Optional optimiser parameter groups (a ``"name"`` key lets :meth:`after_backward` scale one's step);
        None = all trainable parameters in one group."""
        return None
