"""MCDB, Modal Consistency Dynamic Balance: OGM-style coefficients from per-modality retrieval confidence.

The paper says MCDB "dynamically adjusts the contribution weight of each modality" to counter the imbalance that
text introduces, under the keywords "gradient modulation" and "modal balance" [paper]. The mechanism could not be
read; this is OGM-GE's (Peng et al., CVPR 2022, github.com/GeWu-Lab/OGM-GE_CVPR2022 ``main.py``) carried over to
EEG→image and EEG→text retrieval [assumed]:

* confidence ``s_m`` = mean over the batch of the softmax probability that EEG row i puts on its own target(s) in
  the EEG→m logits (OGM sums the true-class probability of each unimodal head; a mean is the same ratio);
* normalised confidence ``ŝ_m`` = mean over rows of that mass divided by the row's chance level (its number of
  positive columns over its number of columns). OGM's heads share one label space, so their chance levels agree;
  here the image row has one positive among B columns and the text row every same-concept column, so the raw ratio
  leans toward text by the mean number of same-concept rows (≈1.6 at batch 1000 on THINGS: raw ρ ≈ 0.63 before
  anything is learned). Normalised, an untrained model has ``ŝ_img ≈ ŝ_txt ≈ 1``;
* ``ρ = ŝ_img / ŝ_txt``; the dominant modality (ρ_m > 1) gets ``k_m = 1 − tanh(α · ρ_m)`` (OGM Eq. 10), the
  other ``k = 1``. At an exact tie neither is dominant (OGM's ``else`` branch would modulate the second modality);
* active only inside an epoch window given as fractions of training (OGM-GE: epochs 0…50 of 100).
"""
from __future__ import annotations

import torch

_TINY = 1e-12


def positive_mass(logits: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, (softmax probability on that row's positive columns, the same over the row's chance level).

    ``positives`` is a 0/1 or bool mask; the chance level of a row is its positive count over its column count.
    """
    positives = positives.to(torch.float32)
    mass = (torch.softmax(logits.detach().float(), dim=1) * positives).sum(dim=1)
    chance = positives.sum(dim=1) / positives.shape[1]
    return mass, mass / chance


def ogm_coefficients(s_img: torch.Tensor, s_txt: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k_img, k_txt)``: ``1 − tanh(α·ρ)`` for the more confident modality, 1 for the other (MCDB passes the
    chance-normalised confidences).

    Tensor ops throughout, so nothing waits for the GPU.
    """
    ratio = s_img / s_txt.clamp_min(_TINY)
    one = torch.ones_like(ratio)
    k_img = torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), one)
    k_txt = torch.where(ratio < 1, 1 - torch.tanh(alpha / ratio.clamp_min(_TINY)), one)
    return k_img, k_txt


def in_window(epoch: int, epochs: int, start: float, end: float) -> bool:
    """Whether 1-based ``epoch`` of ``epochs`` falls in the window ``[start, end)`` of training progress.

    Epoch e covers progress ``(e − 1) / epochs``, so ``[0, 0.5)`` is epochs 1…50 of 100 and 1…2 of 3: the first
    half for any epoch count, and at least the first epoch whenever ``start == 0 < end``.
    """
    if not 0 <= start <= end <= 1:
        raise ValueError(f"the MCDB window needs 0 <= mcdb_start <= mcdb_end <= 1, got [{start}, {end})")
    progress_epochs = epoch - 1
    eps = 1e-9  # fractions such as 0.3·10 are not exact in binary
    return start * epochs - eps <= progress_epochs < end * epochs - eps


class BalanceTracker:
    """Per-epoch means of the coefficients and confidences, kept as tensors so no step waits on a ``.item()``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: float(total) / self._counts[key] for key, total in self._sums.items()}

    def state(self) -> dict:
        """The running sums and counts, for a checkpoint (empty at an epoch's end, when the trainer writes one)."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load(self, state: dict) -> None:
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])
