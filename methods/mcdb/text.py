"""EEG↔text alignment when several batch rows share one concept text (and so one text embedding).

Plain diagonal InfoNCE would make identical texts negatives of each other; nothing retrievable says how the paper
handles this, so three choices are offered (``text_loss``) [assumed]:

* ``multi_positive`` (default): every row of the same concept is a positive (``bench.losses.multi_positive_losses``);
* ``label_targets``: classification of each EEG row among the batch's *distinct* concept texts (the spec's
  option (a) restricted to the batch), and for each distinct text a multi-positive target over the EEG rows;
* ``clip``: plain diagonal InfoNCE, identical texts included as negatives (the naive reading of the formula).

Each returns (L_eeg→txt, L_txt→eeg, (per-row confidence, per-row confidence over chance)); the confidence is the
softmax mass that EEG row i puts on its own concept's text column(s) under the same logits the loss uses, i.e.
MCDB's s_txt before averaging, and its chance level is those columns' share of the row (n_concept / B for
``multi_positive``, 1 / distinct texts for ``label_targets``, 1 / B for ``clip``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.losses import directional_clip_losses, multi_positive_losses
from bench.methods.mcdb.balance import positive_mass

TEXT_LOSSES = ("multi_positive", "label_targets", "clip")
TEXT_POSITIVES = ("batch", "all_concepts")


def all_concepts_alignment(eeg: torch.Tensor, table: torch.Tensor, table_ids: torch.Tensor, concept: torch.Tensor,
                           logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spec's option (a) over *every* training concept text (``text_positives=all_concepts``): each EEG row is
    classified among all U concept texts ``table`` (row u is concept ``table_ids[u]``, sorted), and each concept text
    present in the batch gets a multi-positive target over its EEG rows. Returns (L_e→t, L_t→e, confidence)."""
    target = torch.searchsorted(table_ids, concept)                      # each row's column among the U texts
    logits = logit_scale * eeg @ table.t()                               # (B, U)
    eeg_to_txt = F.cross_entropy(logits, target)
    first, inverse = _distinct(concept)
    members = F.one_hot(inverse, num_classes=len(first)).t().to(logits.dtype)  # (P, B): present concept → its rows
    soft = members / members.sum(dim=1, keepdim=True)
    txt_to_eeg = -(soft * F.log_softmax(logits[:, target[first]].t(), dim=1)).sum(dim=1).mean()
    with torch.no_grad():
        confidence = positive_mass(logits, F.one_hot(target, num_classes=table.shape[0]).bool())
    return eeg_to_txt, txt_to_eeg, confidence


def _distinct(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each distinct label's first row, each row's position among the distinct labels)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    rows = torch.arange(labels.shape[0], device=labels.device)
    first = torch.full((int(inverse.max()) + 1,), labels.shape[0], device=labels.device, dtype=rows.dtype)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


def text_alignment(kind: str, eeg: torch.Tensor, text: torch.Tensor, concept: torch.Tensor,
                   logit_scale: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    if kind == "multi_positive":
        eeg_to_txt, txt_to_eeg = multi_positive_losses(eeg, text, concept, logit_scale)
        positives = concept[:, None] == concept[None, :]
        with torch.no_grad():
            confidence = positive_mass(logit_scale * eeg @ text.t(), positives)
        return eeg_to_txt, txt_to_eeg, confidence
    if kind == "label_targets":
        first, inverse = _distinct(concept)
        logits = logit_scale * eeg @ text[first].t()                      # (B, U)
        eeg_to_txt = F.cross_entropy(logits, inverse)
        members = F.one_hot(inverse, num_classes=len(first)).t().to(logits.dtype)  # (U, B)
        soft = members / members.sum(dim=1, keepdim=True)
        txt_to_eeg = -(soft * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
        return eeg_to_txt, txt_to_eeg, positive_mass(logits, members.t())
    if kind == "clip":
        eeg_to_txt, txt_to_eeg = directional_clip_losses(eeg, text, logit_scale)
        with torch.no_grad():
            logits = logit_scale * eeg @ text.t()
            confidence = positive_mass(logits, torch.eye(len(eeg), dtype=torch.bool, device=eeg.device))
        return eeg_to_txt, txt_to_eeg, confidence
    raise ValueError(f"text_loss must be one of {', '.join(TEXT_LOSSES)}, not {kind!r}")
