"""NICE's EEG encoder: optional spatial front-end (SA / GA), TSConv trunk, residual projector.

Song, Liu, Li, Yang, Wang, Gao, "Decoding Natural Images from EEG for Object Recognition", ICLR 2024
(arXiv 2308.13234); reference code github.com/eeyhsong/NICE-EEG (``nice_stand.py``: ``Enc_eeg`` + ``Proj_eeg``;
``spatial_modules.py``: SA and GA).

At the paper shape (63 channels × 250 samples → 768) the trunk gives 1440 features and the encoder has
1,802,496 parameters (1,815,470 with SA, 1,865,746 with GA).

Deviations from the reference code:

- The spatial kernel and the SA/GA sizes follow ``n_chans`` and ``n_times`` instead of hard-coded 63/64 and 250.
- SA applies its attention weights and GA attends across channels for every sample (see ``spatial.py`` for
  the two reference bugs this avoids). ``sa_mode="reference"`` reproduces the released SA instead, whose
  attention is the identity (1,807,154 parameters at the paper shape); ``ga_mode="reference"`` the released GA
  wiring, the graph for the first sample of each training batch only (same parameters; self-loop map in eval mode).
- NICE's init (``nice_init_``) covers the front-end too, as ``Enc_eeg.apply(weights_init_normal)`` does.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from bench.encoders.base import EEGEncoderMixin, check_probability
from bench.encoders.projector import ResidualProjector
from bench.encoders.spatial import build_spatial_front_end
from bench.encoders.trunk import TSConvTrunk, nice_init_
from bench.registry import register_encoder

NICE_CITATION = "Song et al., Decoding Natural Images from EEG for Object Recognition, ICLR 2024 (arXiv 2308.13234)"


@register_encoder("tsconv", description="NICE TSConv + residual projector (spatial_front_end: None, 'sa', 'ga'; "
                                        "sa_mode, ga_mode: 'attention', 'reference')",
                  citation=NICE_CITATION)
class TSConvEncoder(EEGEncoderMixin, nn.Module):
    def __init__(self, n_chans: int | None, n_times: int, n_outputs: int, sfreq: float | None = None,
                 chs_info: Sequence[Any] | None = None, spatial_front_end: str | None = None,
                 front_end_dropout: float = 0.3, trunk_dropout: float = 0.5, proj_dropout: float = 0.5,
                 sa_mode: str = "attention", ga_mode: str = "attention") -> None:
        super().__init__(n_chans=n_chans, n_times=n_times, n_outputs=n_outputs, sfreq=sfreq, chs_info=chs_info)
        self.spatial_front_end = spatial_front_end
        self.front_end = build_spatial_front_end(spatial_front_end, self.n_chans, n_times,
                                                 check_probability("front_end_dropout", front_end_dropout),
                                                 sa_mode=sa_mode, ga_mode=ga_mode)
        self.trunk = TSConvTrunk(self.n_chans, n_times, dropout=check_probability("trunk_dropout", trunk_dropout))
        self.projector = ResidualProjector(self.trunk.out_features, n_outputs,
                                           dropout=check_probability("proj_dropout", proj_dropout))
        nice_init_(self)

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x, subject)
        return self.projector(self.trunk(self.front_end(x)))


@register_encoder("tsconv-sa", description="NICE-SA: channel self-attention, then TSConv + projector "
                                           "(sa_mode: 'attention', 'reference')", citation=NICE_CITATION)
class TSConvSAEncoder(TSConvEncoder):
    def __init__(self, n_chans: int | None, n_times: int, n_outputs: int, sfreq: float | None = None,
                 chs_info: Sequence[Any] | None = None, front_end_dropout: float = 0.3, trunk_dropout: float = 0.5,
                 proj_dropout: float = 0.5, sa_mode: str = "attention") -> None:
        super().__init__(n_chans, n_times, n_outputs, sfreq, chs_info, "sa", front_end_dropout, trunk_dropout,
                         proj_dropout, sa_mode=sa_mode)


@register_encoder("tsconv-ga", description="NICE-GA: channel graph attention, then TSConv + projector "
                                           "(ga_mode: 'attention', 'reference')", citation=NICE_CITATION)
class TSConvGAEncoder(TSConvEncoder):
    def __init__(self, n_chans: int | None, n_times: int, n_outputs: int, sfreq: float | None = None,
                 chs_info: Sequence[Any] | None = None, front_end_dropout: float = 0.3, trunk_dropout: float = 0.5,
                 proj_dropout: float = 0.5, ga_mode: str = "attention") -> None:
        super().__init__(n_chans, n_times, n_outputs, sfreq, chs_info, "ga", front_end_dropout, trunk_dropout,
                         proj_dropout, ga_mode=ga_mode)
