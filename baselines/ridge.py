"""Ridge: closed-form ridge regression from flattened, averaged EEG to the image features.

The fastest sanity baseline and the first end-to-end user of the whole harness path. No gradient training:
the Trainer calls :meth:`fit_closed_form` once with the training set.

``alpha`` is relative: the penalty is ``alpha`` times the mean eigenvalue of the Gram matrix of the standardised
inputs, so one value behaves alike across channel counts, window lengths and dataset sizes.

Scoring happens in the **centred** target space: the EEG embedding is the centred prediction ``x̃ W`` (no intercept),
and :meth:`encode_image` subtracts the training image mean ``m`` from every image and centroid gallery row
(``image_mean``, a buffer set by the fit, so each embedding still depends only on its own input). Adding ``m`` back
to the prediction, as an ordinary regression would, breaks retrieval on CLIP-like targets: real CLIP image features
share a large common direction (``|m|`` ≈ 0.74), ridge shrinks ``x̃ W`` to a small vector, so the query is mostly
``m`` and every query ranks first the gallery items that lie furthest along it. On CLIP ViT-L/14 features of
THINGS-EEG that took top-1 from ~20 % to 2 % (issue 17); centring both sides gives 23 %. The query is the half that
matters: against a centred query ``q`` the gallery mean only adds ``q · m``, the same for every row; centring the
gallery as well makes the cosine that of the space the regression was fitted in. A text gallery is scored against
the same query as it is, for the same reason (``q`` times the text mean is one constant for every text).
"""
from __future__ import annotations

import torch

from bench.method import DataInfo, Method
from bench.registry import register_method


@register_method("ridge", description="closed-form ridge regression from flattened EEG to image features "
                                      "(sanity baseline)", citation="Hoerl & Kennard, Technometrics 1970")
class Ridge(Method):
    defaults = {"alpha": 1.0, "time_decimate": 1}
    closed_form = True

    def __init__(self, info: DataInfo, **hparams):
        super().__init__(info, **hparams)
        if self.hparams["alpha"] <= 0 or self.hparams["time_decimate"] < 1:
            raise ValueError("ridge needs alpha > 0 and time_decimate >= 1")
        d_in = info.n_chans * len(range(0, info.n_times, int(self.hparams["time_decimate"])))
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(d_in))
        self.register_buffer("weight", torch.zeros(d_in, info.feature_dim))
        self.register_buffer("image_mean", torch.zeros(info.feature_dim))

    def _inputs(self, eeg: torch.Tensor) -> torch.Tensor:
        return eeg[..., :: int(self.hparams["time_decimate"])].flatten(1)

    def fit_closed_form(self, eeg: torch.Tensor, image: torch.Tensor, subject: torch.Tensor | None) -> None:
        x = self._inputs(eeg.float()).double()
        y = image.double()
        self.mean.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-8))
        x = (x - self.mean.double()) / self.scale.double()
        y_mean = y.mean(0)
        y = y - y_mean
        n, d = x.shape
        penalty = float(self.hparams["alpha"]) * max(n, d)  # mean Gram eigenvalue: trace = n·d over min(n, d) of them
        if n >= d:  # primal: (XᵀX + λI) W = XᵀY
            w = torch.linalg.solve(x.T @ x + penalty * torch.eye(d, dtype=x.dtype, device=x.device), x.T @ y)
        else:       # dual: W = Xᵀ (XXᵀ + λI)⁻¹ Y, cheaper when there are fewer samples than inputs
            w = x.T @ torch.linalg.solve(x @ x.T + penalty * torch.eye(n, dtype=x.dtype, device=x.device), y)
        self.weight.copy_(w.float())
        self.image_mean.copy_(y_mean.float())

    def encode_eeg(self, eeg: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        return ((self._inputs(eeg) - self.mean) / self.scale) @ self.weight  # centred: see the module docstring

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        return features - self.image_mean
