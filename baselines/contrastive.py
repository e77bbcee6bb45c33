"""What the contrastive baselines share: a registered EEG encoder, a temperature, InfoNCE against the image features.

NICE, ATM-S and UBP's EEGProject are one recipe with different parts: an EEG encoder whose output has the image
features' dimension, and a symmetric InfoNCE (CLIP loss) between EEG embeddings and the seen images' features. They
differ in the encoder, in whether the EEG side is L2-normalised, and in how the logit scale is parametrised and
whether it is trained. Those differences are hyper-parameters here (the ``method:`` config section):

``encoder``            registry name of the EEG encoder (``bench list encoders``); any of them fits any method
``encoder_kwargs``     extra constructor arguments of that encoder (e.g. ``{sa_mode: reference}``)
``logit_scale_init``   the raw parameter's initial value; all three reference codes use log(1/0.07)
``logit_scale_type``   ``exp`` (scale = e^raw, CLIP/NICE), ``linear`` (scale = raw, ATM's released scripts),
                       ``softplus`` (scale = softplus(raw), UBP)
``learn_logit_scale``  train the raw parameter, or keep it as a fixed buffer (NICE never hands it to the optimiser)
``normalize_eeg``      L2-normalise EEG embeddings in the loss (NICE) or use them as they come out of the
                       encoder's LayerNorm (ATM, UBP); the harness scores by cosine similarity either way

The image (and text) targets are always L2-normalised in the loss, as every reference does, in its loss (NICE,
UBP) or when it extracts the features (ATM).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bench.losses import clip_loss
from bench.method import Batch, DataInfo, LossOutput, Method, TrainState
from bench.registry import ENCODERS

LOG_INV_007 = math.log(1 / 0.07)
LOGIT_SCALE_TYPES = ("exp", "linear", "softplus")


def build_encoder(name: str, info: DataInfo, n_outputs: int, encoder_kwargs: Mapping[str, Any]) -> nn.Module:
    """The registered encoder ``name`` sized for the data (braindecode's signal arguments).

    ``n_subjects`` comes from the data as well, for encoders that declare it (ATM-S), so an encoder swapped in by
    config needs no other change.
    """
    cls = ENCODERS.get(name).obj
    from_data: dict[str, Any] = dict(n_chans=info.n_chans, n_times=info.n_times, n_outputs=n_outputs,
                                     sfreq=info.sfreq, chs_info=list(info.ch_names) or None)
    if "n_subjects" in inspect.signature(cls).parameters:
        from_data["n_subjects"] = info.n_subjects
    clash = sorted(set(encoder_kwargs) & set(from_data))
    if clash:
        raise ValueError(f"method.encoder_kwargs sets {clash}, which come from the data; remove them")
    return cls(**from_data, **encoder_kwargs)


class LogitScale(nn.Module):
    """The inverse temperature: ``exp(raw)``, ``raw`` or ``softplus(raw)``; ``raw`` is a parameter or a buffer."""

    def __init__(self, init: float, kind: str = "exp", learnable: bool = True) -> None:
        super().__init__()
        if kind not in LOGIT_SCALE_TYPES:
            raise ValueError(f"logit_scale_type must be one of {LOGIT_SCALE_TYPES}, got {kind!r}")
        self.kind = kind
        raw = torch.tensor(float(init))
        if learnable:
            self.raw = nn.Parameter(raw)
        else:  # a buffer still travels with the state dict and the device, but no optimiser can move it
            self.register_buffer("raw", raw)

    def forward(self) -> torch.Tensor:
        if self.kind == "exp":
            return self.raw.exp()
        if self.kind == "softplus":
            return F.softplus(self.raw)
        return self.raw


class ContrastiveBaseline(Method):
    """An EEG encoder trained with symmetric InfoNCE against the image features (see the module docstring)."""

    defaults = {
        "encoder": "tsconv",
        "encoder_kwargs": {},
        "logit_scale_init": LOG_INV_007,
        "logit_scale_type": "exp",
        "learn_logit_scale": True,
        "normalize_eeg": True,
    }

    def __init__(self, info: DataInfo, **hparams: Any) -> None:
        super().__init__(info, **hparams)
        h = self.hparams
        if not isinstance(h["encoder_kwargs"], Mapping):
            raise TypeError(f"method.encoder_kwargs must be a mapping, got {h['encoder_kwargs']!r}")
        self.encoder = build_encoder(h["encoder"], info, info.feature_dim, h["encoder_kwargs"])
        self.logit_scale = LogitScale(h["logit_scale_init"], h["logit_scale_type"], bool(h["learn_logit_scale"]))

    def encode_eeg(self, eeg: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        return self.encoder(eeg, subject)

    def loss_embeddings(self, batch: Batch) -> torch.Tensor:
        """The EEG side as the loss sees it: normalised or not, per ``normalize_eeg``."""
        eeg = self.encode_eeg(batch.eeg, batch.subject)
        return F.normalize(eeg, dim=-1) if self.hparams["normalize_eeg"] else eeg

    def training_loss(self, batch: Batch, state: TrainState) -> LossOutput:
        scale = self.logit_scale()
        loss = clip_loss(self.loss_embeddings(batch), F.normalize(batch.image, dim=-1), scale)
        return LossOutput(loss, {"logit_scale": scale.detach()})
