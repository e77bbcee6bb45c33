"""ATM-S: channel-as-token transformer with a subject token, TSConv and the residual projector; image + text loss.

Li et al., "Visual Decoding and Reconstruction via EEG Embeddings with Guided Diffusion",
NeurIPS 2024 (arXiv 2403.07721); reference code github.com/dongyangli-del/EEG_Image_decode
(``Retrieval/ATMS_retrieval.py``, ``Retrieval/loss.py``).

Model: the ``atms`` encoder (``bench/encoders/atms.py``): each of the 63 channels is a token, a learned subject
token is prepended, one post-norm attention layer (4 heads, d_model 250, FFN 256, dropout 0.25), the 63 channel
tokens go through TSConv and the projector to the feature dimension (1024 for ViT-H-14).

Loss: ``(1 − w)·ClipLoss(eeg, image) + w·ClipLoss(eeg, text)`` with ``text_weight`` w = 0.01 (``alpha = 0.99``).
In the paper-era scripts the logit scale is the **raw** learnable parameter (initialised at log(1/0.07) ≈ 2.66, no
exp) and multiplies **un-normalised** EEG embeddings (LayerNorm outputs, norm ≈ √1024 = 32) against unit-norm
targets, an effective scale near 85. Defaults reproduce that: ``logit_scale_type: linear``, ``normalize_eeg: false``;
the CLIP form is ``logit_scale_type: exp, normalize_eeg: true`` (the default of the repository's 2025/26 refactor).

Rows of a batch that share a concept share one text vector. Plain ClipLoss over these exact duplicates is *not*
biased against them: a duplicated column has the same logit as the target column, so the cross-entropy equals the
label-aware loss with uniform soft targets (``bench.losses.multi_positive_losses``) in value and in gradient, in both
directions (``tests/test_baselines.py`` checks this). A ``multi_positive`` switch would change nothing, so there is
none: the reference's text term is already label-aware. The same holds for the image term when a batch holds several
single trials of one image.

``subject_tokens``: ``single`` (default) gives every sample, training and test, one learned token. That is what the
reference computes in both of its protocols: within a subject there is one id, and its leave-one-subject-out runs
label all training data with the held-out subject's id. ``per_subject`` gives each training subject its own row; a
subject the model must not know (leave-one-subject-out test) then falls back to the shared token, which training
never reaches.

Recipe: ``baselines/atm.yaml`` (AdamW 3e-4, weight decay 0.01, batch 64, 40 epochs, single trials,
63 channels).

Deviations from the reference code:

- All 63 channel tokens reach TSConv; the paper-era scripts keep tokens ``[:, :63]``, i.e. the subject token and
  channels 1–62, dropping O2 (the refactored ``models/atms.py`` keeps ``[:, 1:]`` as here). The paper-era slice is
  one switch away: ``--set 'method.encoder_kwargs={token_slice: paper}'`` (same parameters).
- Model selection on validation top-1 over held-out training concepts; the reference has no validation set and
  reports the best (or the mean of the last 10) *test* epochs (ATM issues #8, #21).
- The unused ``subject_wise_linear`` layers and the temporal embedding are not built (``bench/encoders/atms.py``).
- Batches keep their last, smaller remainder (the reference's DataLoader drops it).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bench.baselines.contrastive import ContrastiveBaseline
from bench.losses import LOG_INV_007
from bench.losses import clip_loss
from bench.method import Batch, DataInfo, LossOutput, TrainState
from bench.registry import register_method

SUBJECT_TOKENS = ("single", "per_subject")


@register_method("atm", description="ATM-S: channel-token transformer + subject token + TSConv; 0.99 image + "
                                    "0.01 text CLIP loss (single trials, 63 channels)",
                 citation="Li et al., Visual Decoding and Reconstruction via EEG Embeddings with Guided Diffusion, "
                          "NeurIPS 2024 (arXiv 2403.07721)")
class ATM(ContrastiveBaseline):
    requires_text = True
    # the reference's model (ATMS_retrieval.py); the training recipe is baselines/atm.yaml
    defaults = {
        "encoder": "atms",                # iTransformer (1 layer, 4 heads, d_model 250, d_ff 256, dropout 0.25)
        "encoder_kwargs": {},             # + Enc_eeg + Proj_eeg; {token_slice: paper}: the scripts' [:, :63]
        "logit_scale_init": LOG_INV_007,  # ATMS.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        "logit_scale_type": "linear",     # ClipLoss multiplies by the raw parameter (no exp)
        "learn_logit_scale": True,        # part of eeg_model.parameters(), so AdamW trains it
        "normalize_eeg": False,           # eeg_features reach ClipLoss as Proj_eeg's LayerNorm output
        "text_weight": 0.01,              # loss = alpha * img_loss + (1 - alpha) * text_loss, alpha = 0.99
        "subject_tokens": "single",       # one id per run: sub-XX within a subject; the held-out id for LOSO
    }

    def __init__(self, info: DataInfo, **hparams: Any) -> None:
        super().__init__(info, **hparams)
        h = self.hparams
        if not 0.0 <= float(h["text_weight"]) <= 1.0:
            raise ValueError(f"text_weight must lie in [0, 1], got {h['text_weight']!r}")
        if h["subject_tokens"] not in SUBJECT_TOKENS:
            raise ValueError(f"subject_tokens must be one of {SUBJECT_TOKENS}, got {h['subject_tokens']!r}")

    def encode_eeg(self, eeg: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        if self.hparams["subject_tokens"] == "single":
            subject = torch.zeros(eeg.shape[0], dtype=torch.long, device=eeg.device)
        return self.encoder(eeg, subject)

    def training_loss(self, batch: Batch, state: TrainState) -> LossOutput:
        scale = self.logit_scale()
        eeg = state.gather(self.loss_embeddings(batch))  # whole-step negatives (ContrastiveBaseline.training_loss)
        image = clip_loss(eeg, state.gather(F.normalize(batch.image, dim=-1)), scale)
        weight = float(self.hparams["text_weight"])
        if weight == 0.0:
            return LossOutput(image, {"loss_image": image.detach(), "logit_scale": scale.detach()})
        text = clip_loss(eeg, state.gather(F.normalize(batch.text, dim=-1)), scale)
        return LossOutput((1 - weight) * image + weight * text,
                          {"loss_image": image.detach(), "loss_text": text.detach(), "logit_scale": scale.detach()})
