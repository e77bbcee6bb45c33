"""The one way a method builds a registered EEG encoder at the data's shape (braindecode's signal arguments)."""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from bench.method import DataInfo
from bench.registry import ENCODERS


def build_encoder(name: str, info: DataInfo, n_outputs: int, encoder_kwargs: Mapping[str, Any]) -> nn.Module:
    """The registered encoder ``name`` sized for the data.

    ``n_subjects`` comes from the data as well, for encoders that declare it (ATM-S), so an encoder swapped in by
    config needs no other change. The data's arguments cannot be overridden through ``method.encoder_kwargs``.
    """
    if not isinstance(encoder_kwargs, Mapping):
        raise TypeError(f"method.encoder_kwargs must be a mapping, got {encoder_kwargs!r}")
    cls = ENCODERS.get(name).obj
    from_data: dict[str, Any] = dict(n_chans=info.n_chans, n_times=info.n_times, n_outputs=n_outputs,
                                     sfreq=info.sfreq, chs_info=list(info.ch_names) or None)
    if "n_subjects" in inspect.signature(cls).parameters:
        from_data["n_subjects"] = info.n_subjects
    clash = sorted(set(encoder_kwargs) & set(from_data))
    if clash:
        raise ValueError(f"method.encoder_kwargs sets {clash}, which come from the data; remove them")
    return cls(**from_data, **encoder_kwargs)
