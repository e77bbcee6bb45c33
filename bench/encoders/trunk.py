"""NICE's temporal-spatial convolution ("TSConv", revised from ShallowNet) and NICE's weight initialisation.

Song et al., "Decoding Natural Images from EEG for Object Recognition", ICLR 2024 (arXiv 2308.13234);
``PatchEmbedding`` in github.com/eeyhsong/NICE-EEG ``nice_stand.py``. ATM-S (``Retrieval/ATMS_retrieval.py``)
applies the same trunk to its channel-token matrix.

Deviations from the reference code: none in the layers. The spatial kernel is ``(n_chans, 1)`` instead of the
hard-coded ``(63, 1)``, so the trunk also runs on the 17 occipital/parietal channels.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from bench.encoders.base import check_probability, positive_int, require_min_times

N_FILTERS = 40
TEMPORAL_KERNEL = 25
POOL_KERNEL = 51
POOL_STRIDE = 5


def tsconv_out_times(n_times: int) -> int:
    """Time steps left after the temporal conv and pool (36 for 250 samples)."""
    return (n_times - TEMPORAL_KERNEL + 1 - POOL_KERNEL) // POOL_STRIDE + 1


class TSConvTrunk(nn.Module):
    """``(batch, n_chans, n_times)`` → ``(batch, 40 · T')``, T' = ``tsconv_out_times(n_times)`` (1440 for 63×250).

    The flattened vector is time-major (index ``t · 40 + filter``), as NICE's ``Rearrange('b e h w -> b (h w) e')``
    followed by a flatten, so NICE checkpoints' projector weights line up.
    """

    def __init__(self, n_chans: int, n_times: int, dropout: float = 0.5) -> None:
        super().__init__()
        positive_int("n_chans", n_chans)
        positive_int("n_times", n_times)
        require_min_times(n_times, TEMPORAL_KERNEL + POOL_KERNEL - 1,
                          f"TSConv (temporal kernel {TEMPORAL_KERNEL}, then average pool {POOL_KERNEL})")
        self.out_features = N_FILTERS * tsconv_out_times(n_times)
        self.temporal = nn.Sequential(
            nn.Conv2d(1, N_FILTERS, (1, TEMPORAL_KERNEL)),
            nn.AvgPool2d((1, POOL_KERNEL), (1, POOL_STRIDE)),
            nn.BatchNorm2d(N_FILTERS),
            nn.ELU(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(N_FILTERS, N_FILTERS, (n_chans, 1)),
            nn.BatchNorm2d(N_FILTERS),
            nn.ELU(),
            nn.Dropout(check_probability("dropout", dropout)),
        )
        self.pointwise = nn.Conv2d(N_FILTERS, N_FILTERS, (1, 1))

    def temporal_filter(self, x: torch.Tensor) -> torch.Tensor:
        """The temporal conv followed by the average pool, computed as one strided convolution.

        Average-pooling a convolution equals convolving with the kernel smeared by the pooling box, sampled at the
        pool's stride; the output matches ``AvgPool(Conv(x))`` up to float rounding with the same parameters, at a
        fraction of the cost (no 226-sample intermediate, one fifth of the output positions).
        """
        conv = self.temporal[0]
        box = conv.weight.new_full((1, 1, POOL_KERNEL), 1.0 / POOL_KERNEL)
        smeared = F.conv1d(conv.weight.reshape(N_FILTERS, 1, TEMPORAL_KERNEL), box, padding=POOL_KERNEL - 1)
        return F.conv2d(x, smeared.unsqueeze(2), conv.bias, stride=(1, POOL_STRIDE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.temporal[3](self.temporal[2](self.temporal_filter(x.unsqueeze(1))))  # BN, ELU
        h = self.pointwise(self.spatial(h))  # (batch, 40, 1, T')
        return h.flatten(2).transpose(1, 2).flatten(1)


@torch.no_grad()
def nice_init_(module: nn.Module) -> nn.Module:
    """NICE's ``weights_init_normal``: conv/linear weights N(0, 0.02); batch-norm weight N(1, 0.02), bias 0.

    Conv and linear biases keep PyTorch's default, as in NICE (which sets only their weights).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module
