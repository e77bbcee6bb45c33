"""The adapters over the frozen image and text features (MCDB's φ_img, φ_text).

The paper says an adapter sits on the pre-trained visual and textual features "to reduce the instability of
high-dimensional representations" [paper]; its layers could not be read, so two readings are offered [assumed]:

* ``residual`` (default): NICE/ATM's projection head, ``Linear → h + Dropout(Linear(GELU(h))) → LayerNorm``
  (``bench.encoders.ResidualProjector``). The residual and the LayerNorm match "stabilise high-dim features".
* ``bottleneck``: CLIP-Adapter style, ``x + λ · Linear(ReLU(Linear(x)))`` through a ``dim · ratio`` bottleneck
  (Gao et al., IJCV 2024). The spec writes the residual as ``x + λ·…``; CLIP-Adapter itself blends
  ``(1 − λ)·x + λ·…`` and puts a ReLU after the second layer too. The spec's form is used because it keeps the raw
  feature at full strength at initialisation.
* ``none``: the raw frozen features (what NICE's code effectively does: its image projector returns its input).
"""
from __future__ import annotations

import torch
from torch import nn

from bench.encoders import ResidualProjector

ADAPTERS = ("residual", "bottleneck", "none")


class BottleneckAdapter(nn.Module):
    def __init__(self, dim: int, ratio: float, residual_scale: float, dropout: float) -> None:
        super().__init__()
        if not 0 < ratio <= 1:
            raise ValueError(f"bottleneck_ratio must be in (0, 1], got {ratio!r}")
        hidden = max(1, round(dim * ratio))
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        self.residual_scale = float(residual_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.dropout(self.up(torch.relu(self.down(x))))


def build_adapter(kind: str, dim: int, dropout: float, bottleneck_ratio: float, bottleneck_scale: float) -> nn.Module:
    """A shape-preserving ``(…, dim) → (…, dim)`` adapter: the shared space keeps the feature dimension."""
    if kind == "residual":
        return ResidualProjector(dim, dim, dropout=dropout)
    if kind == "bottleneck":
        return BottleneckAdapter(dim, bottleneck_ratio, bottleneck_scale, dropout)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, not {kind!r}")
