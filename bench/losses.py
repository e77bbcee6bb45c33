"""Contrastive losses shared by the methods (NICE, ATM, EEGProject, MCDB)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: log(1/0.07): CLIP's initial inverse temperature, used by every reference code base
LOG_INV_007 = math.log(1 / 0.07)
LOGIT_SCALE_TYPES = ("exp", "linear", "softplus")


class LogitScale(nn.Module):
    """The inverse temperature: ``exp(raw)``, ``raw`` or ``softplus(raw)``, optionally clipped at ``max_scale`` (CLIP
    clips the scale, not its log); ``raw`` is a parameter, or a buffer when it must not learn."""

    def __init__(self, init: float, kind: str = "exp", learnable: bool = True, max_scale: float | None = None) -> None:
        super().__init__()
        if kind not in LOGIT_SCALE_TYPES:
            raise ValueError(f"logit_scale_type must be one of {LOGIT_SCALE_TYPES}, got {kind!r}")
        self.kind, self.max_scale = kind, max_scale
        raw = torch.tensor(float(init))
        if learnable:
            self.raw = nn.Parameter(raw)
        else:  # a buffer still travels with the state dict and the device, but no optimiser can move it
            self.register_buffer("raw", raw)

    def forward(self) -> torch.Tensor:
        if self.kind == "exp":
            scale = self.raw.exp()
        elif self.kind == "softplus":
            scale = F.softplus(self.raw)
        else:
            scale = self.raw
        return scale if self.max_scale is None else scale.clamp(max=float(self.max_scale))


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of aligned pairs (row i of ``a`` matches row i of ``b``).

    Inputs are used as given (normalise them first for cosine logits): NICE normalises both sides, the ATM and UBP
    code bases leave the EEG side un-normalised, so the choice belongs to the method.
    """
    logits = logit_scale * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def directional_clip_losses(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a→b, b→a) cross-entropies separately, for methods that weight the two directions."""
    logits = logit_scale * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.t(), target)


def multi_positive_losses(eeg: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                          logit_scale: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-aware InfoNCE, (eeg→target, target→eeg): rows that share a label are all positives of each other.

    The target distribution spreads uniformly over a row's positives; with all labels distinct it equals
    :func:`directional_clip_losses`. When rows sharing a label also share an identical target vector (one text per
    concept), plain InfoNCE over the copies gives the same value and gradient, because the copies tie; the two differ
    when same-label rows carry different targets (e.g. the images of one concept as positives of each other).
    """
    logits = logit_scale * eeg @ targets.t()
    positives = (labels[:, None] == labels[None, :]).to(logits.dtype)
    soft = positives / positives.sum(dim=1, keepdim=True)
    eeg_to_target = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    target_to_eeg = -(soft * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return eeg_to_target, target_to_eeg
