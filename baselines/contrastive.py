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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.encoders.build import build_encoder
from bench.losses import LOG_INV_007, LogitScale, clip_loss
from bench.method import Batch, DataInfo, LossOutput, Method, TrainState

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
        # negatives from the whole step on every process (state.gather), so DDP and accumulation train like one batch
        eeg, image = state.gather(self.loss_embeddings(batch)), state.gather(F.normalize(batch.image, dim=-1))
        loss = clip_loss(eeg, image, scale)
        return LossOutput(loss, {"logit_scale": scale.detach()})
