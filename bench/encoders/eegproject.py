"""UBP's "Vanilla" EEG encoder (EEGProject): flatten channels × time, then the residual projector.

Wu et al., "Bridging the Vision-Brain Gap with an Uncertainty-Aware Blur Prior", CVPR 2025 (arXiv 2503.04207);
reference code github.com/HaitaoWuTJU/Uncertainty-aware-Blur-Prior ``base/eeg_backbone.py`` (``EEGProjectLayer``).
Also the EEG encoder of ShrinkAdapter and Shallow Alignment.

At the paper shape (17 channels × 250 samples → 1024) it has 5,404,672 parameters.

Deviations from the reference code: none. The input is flattened channel-major (``x.view(B, C·T)``) and the
layers keep PyTorch's default init, as in UBP. UBP keeps its learnable temperature on this module; here the
temperature belongs to the loss.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from bench.encoders.base import EEGEncoderMixin
from bench.encoders.projector import ResidualProjector
from bench.registry import register_encoder


@register_encoder("eegproject", description="UBP 'Vanilla' EEGProject: flatten C×T + residual MLP projector",
                  citation="Wu et al., Uncertainty-Aware Blur Prior, CVPR 2025 (arXiv 2503.04207)")
class EEGProjectEncoder(EEGEncoderMixin, nn.Module):
    def __init__(self, n_chans: int | None, n_times: int, n_outputs: int, sfreq: float | None = None,
                 chs_info: Sequence[Any] | None = None, dropout: float = 0.3) -> None:
        super().__init__(n_chans=n_chans, n_times=n_times, n_outputs=n_outputs, sfreq=sfreq, chs_info=chs_info)
        self.projector = ResidualProjector(self.n_chans * n_times, n_outputs, dropout=dropout)

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x, subject)
        return self.projector(x.flatten(1))
