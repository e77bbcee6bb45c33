"""Methods for harness tests, loaded as a --plugin file (so Ray workers and subprocesses load them the same way)."""
import time
from pathlib import Path

import torch
from torch import nn

from bench.baselines.ridge import Ridge
from bench.losses import clip_loss
from bench.method import LossOutput, Method
from bench.registry import register_method


@register_method("ridge-flaky", description="ridge that fails on sub-02 with seed 1 (tests)")
class FlakyRidge(Ridge):
    def fit_closed_form(self, eeg, image, subject):
        if int(subject[0]) == 1 and torch.initial_seed() == 1:  # the harness seeded torch with the run's seed
            raise RuntimeError("deliberate failure on sub-02 seed 1")
        super().fit_closed_form(eeg, image, subject)


@register_method("ridge-slow", description="ridge that takes a few seconds while its marker file exists (tests)")
class SlowRidge(Ridge):
    """Sleeps ``slow_s`` while the file ``slow_marker`` exists. A file, not an environment variable: trials run in
    the workers of a Ray started elsewhere, which never see the environment of the `bench run` that sent them."""
    defaults = {**Ridge.defaults, "slow_s": 3.0, "slow_marker": ""}

    def fit_closed_form(self, eeg, image, subject):
        if self.hparams["slow_marker"] and Path(self.hparams["slow_marker"]).exists():
            time.sleep(float(self.hparams["slow_s"]))
        super().fit_closed_form(eeg, image, subject)


@register_method("linear-contrastive", description="a linear EEG encoder with a symmetric InfoNCE loss (tests)")
class LinearContrastive(Method):
    defaults = {"scale": 10.0}

    def __init__(self, info, **hp):
        super().__init__(info, **hp)
        self.proj = nn.Linear(info.n_chans * info.n_times, info.feature_dim)

    def encode_eeg(self, eeg, subject):
        return self.proj(eeg.flatten(1))

    def training_loss(self, batch, state):
        e = nn.functional.normalize(self.encode_eeg(batch.eeg, batch.subject), dim=-1)
        return LossOutput(clip_loss(e, batch.image, self.hparams["scale"]))
