"""The residual projection head shared by NICE, ATM, UBP's EEGProject and MCDB's feature adapters.

``Linear(in → out)``, then ``h + Dropout(Linear(GELU(h)))``, then ``LayerNorm(out)``: NICE's ``Proj_eeg``
(Song et al., ICLR 2024, github.com/eeyhsong/NICE-EEG ``nice_stand.py``), reused unchanged by ATM
(``Proj_eeg``, 1440 → 1024) and UBP (``EEGProjectLayer``, dropout 0.3).
"""
from __future__ import annotations

import torch
from torch import nn

from bench.encoders.base import check_probability, positive_int


class ResidualProjector(nn.Module):
    """Map ``(..., in_dim)`` to ``(..., out_dim)``; usable on EEG features as well as on image or text features."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_dim = positive_int("in_dim", in_dim)
        self.out_dim = positive_int("out_dim", out_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        self.residual = nn.Sequential(nn.GELU(), nn.Linear(out_dim, out_dim),
                                      nn.Dropout(check_probability("dropout", dropout)))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return self.norm(h + self.residual(h))
