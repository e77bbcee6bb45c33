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
from bench.encoders.batchnorm_elu import batch_norm_elu
from bench.encoders.temporal_filter import temporal_stage

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

    The parameters are those of NICE's modules (``temporal``: Conv2d(1, 40, (1, 25)), AvgPool2d, BatchNorm2d, ELU;
    ``spatial``: Conv2d(40, 40, (C, 1)), BatchNorm2d, ELU, Dropout; ``pointwise``: Conv2d(40, 40, 1)), so state dicts
    are interchangeable with the reference structure; :meth:`forward` computes the same function as three GEMMs
    in a filter-last layout instead of through the convolution kernels (see its docstring).
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

    def pooled_kernel(self) -> torch.Tensor:
        """``(40, 25 + 51 - 1)``: the temporal kernel smeared by the pooling box.

        Average-pooling a convolution equals convolving with the kernel smeared by the pooling box, sampled at the
        pool's stride: no 226-sample intermediate, one fifth of the output positions.
        """
        weight = self.temporal[0].weight.reshape(N_FILTERS, 1, TEMPORAL_KERNEL)
        box = weight.new_full((1, 1, POOL_KERNEL), 1.0 / POOL_KERNEL)
        return F.conv1d(weight, box, padding=POOL_KERNEL - 1).reshape(N_FILTERS, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows are (sample, time step[, channel]) and the 40 filters the last axis throughout, so each layer is one
        large GEMM on contiguous memory: the pooled temporal filter over the windows of every channel
        (B·T'·C × 75 @ 75 × 40; on the CPU a C kernel, :mod:`bench.encoders.temporal_filter`), the spatial conv
        (B·T' × C·40 @ C·40 × 40) and the pointwise conv (B·T' × 40 @ 40 × 40). The convolution kernels ran this step
        10-20× slower on a CPU (the temporal filter's weight gradient, one input channel at stride 5, above all). The
        last layout is the time-major output."""
        batch, n_chans, n_times = x.shape
        kernel = self.pooled_kernel()
        n_out = (n_times - kernel.shape[1]) // POOL_STRIDE + 1
        h = temporal_stage(x, kernel, self.temporal[0].bias, POOL_STRIDE, self.temporal[2], self.temporal[3])
        conv = self.spatial[0]
        weight = conv.weight.squeeze(3).transpose(1, 2).reshape(N_FILTERS, n_chans * N_FILTERS)  # [out, c · 40 + in]
        h = torch.addmm(conv.bias, h.view(batch * n_out, n_chans * N_FILTERS), weight.t())  # (B·T', 40)
        h = batch_norm_elu(self.spatial[1], self.spatial[2], h)
        h = _dropout_as_conv_layout(self.spatial[3], h.view(batch, n_out, N_FILTERS))
        h = torch.addmm(self.pointwise.bias, h.reshape(-1, N_FILTERS), self.pointwise.weight.flatten(1).t())
        return h.view(batch, n_out * N_FILTERS)


def _dropout_as_conv_layout(dropout: nn.Dropout, h: torch.Tensor) -> torch.Tensor:
    """``dropout`` on ``(batch, T', 40)`` with its mask drawn in the conv layout's (batch, 40, T') order, so that a
    seeded training step drops the same units as the reference structure does."""
    if not dropout.training or dropout.p == 0.0:
        return h
    if dropout.p == 1.0:
        return torch.zeros_like(h)
    keep = torch.empty(h.shape[0], h.shape[2], h.shape[1], dtype=h.dtype, device=h.device).bernoulli_(1 - dropout.p)
    return h * keep.div_(1 - dropout.p).transpose(1, 2)


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
