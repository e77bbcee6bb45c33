"""Contrastive losses shared by the methods (NICE, ATM, EEGProject, MCDB)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
