"""EEG encoders (issue 6). Importing this package runs every module's ``@register_encoder``.

Each encoder maps ``(batch, n_chans, n_times)`` (plus optional 0-based ``subject`` ids) to ``(batch, n_outputs)``.
``ResidualProjector`` and ``TSConvTrunk`` are the shared pieces other methods (MCDB) build on.
"""
from bench.encoders.atms import ATMSEncoder
from bench.encoders.base import EEGEncoderMixin, ShortWindowError
from bench.encoders.build import build_encoder
from bench.encoders.eegproject import EEGProjectEncoder
from bench.encoders.projector import ResidualProjector
from bench.encoders.spatial import ChannelGraphAttention, ChannelSelfAttention
from bench.encoders.trunk import TSConvTrunk, nice_init_
from bench.encoders.tsconv import TSConvEncoder, TSConvGAEncoder, TSConvSAEncoder

__all__ = [
    "ATMSEncoder", "ChannelGraphAttention", "ChannelSelfAttention", "EEGEncoderMixin", "EEGProjectEncoder",
    "ResidualProjector", "ShortWindowError", "build_encoder", "TSConvEncoder", "TSConvGAEncoder", "TSConvSAEncoder", "TSConvTrunk",
    "nice_init_",
]
