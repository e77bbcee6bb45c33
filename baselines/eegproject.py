"""EEGProject: UBP's "Vanilla" baseline, a residual MLP on flattened averaged EEG, symmetric InfoNCE.

Wu et al., "Bridging the Vision-Brain Gap with an Uncertainty-Aware Blur Prior", CVPR 2025 (arXiv 2503.04207),
Tab. 3 "Vanilla" (no blur: 42.1 / 74.5 intra-subject); reference code
github.com/HaitaoWuTJU/Uncertainty-aware-Blur-Prior (``main.py``, ``base/eeg_backbone.py``, ``base/utils.py``,
``configs/eeg/baseline.yaml``). The strongest simple baseline in the literature; also the EEG encoder of
ShrinkAdapter and Shallow Alignment.

Model: the ``eegproject`` encoder (``bench/encoders/eegproject.py``): flatten 17 × 250 → Linear → residual
GELU/Linear/Dropout(0.3) → LayerNorm, to the feature dimension (1024 for RN50). Loss: ``ClipLoss`` of ``base/utils.py``
on ``softplus(τ) · e · iᵀ``, τ learnable from log(1/0.07) (softplus ≈ 2.73), the EEG embedding **not** normalised
(only the image features are), the mean of the two cross-entropies. Recipe: ``baselines/eegproject.yaml``
(AdamW 1e-4, weight decay 1e-4, batch 1024, up to 50 epochs, averaged repetitions, the 17 occipital/parietal
channels). UBP's leave-one-subject-out runs use lr 1e-5: ``--set train.lr=1e-5`` with ``--protocol inter``.

Deviations from the reference code:

- Model selection on validation top-1 over held-out training concepts. UBP trains intra-subject runs until the
  training loss stops improving (patience 5, min_delta 0.001) and tests the last checkpoint; its inter-subject
  runs stop early on the other subjects' EEG for the 200 *test* images (UBP issue #8).
- τ belongs to the method, not to the encoder module; it is still in the optimiser with weight decay, as in UBP,
  whose ``configure_optimizers`` passes all parameters.
"""
from __future__ import annotations

from bench.baselines.contrastive import ContrastiveBaseline
from bench.losses import LOG_INV_007
from bench.registry import register_method


@register_method("eegproject", description="UBP 'Vanilla' EEGProject: residual MLP on flattened averaged EEG, "
                                           "symmetric InfoNCE with a softplus temperature (17 channels)",
                 citation="Wu et al., Bridging the Vision-Brain Gap with an Uncertainty-Aware Blur Prior, CVPR 2025 "
                          "(arXiv 2503.04207)")
class EEGProject(ContrastiveBaseline):
    # the reference's model (UBP main.py); the training recipe is baselines/eegproject.yaml
    defaults = {
        "encoder": "eegproject",          # flatten -> Linear -> residual GELU/Linear/Dropout(0.3) -> LayerNorm
        "encoder_kwargs": {},
        "logit_scale_init": LOG_INV_007,  # EEGProjectLayer.logit_scale = nn.Parameter(ones([]) * np.log(1 / 0.07))
        "logit_scale_type": "softplus",   # logit_scale = self.brain.softplus(logit_scale)
        "learn_logit_scale": True,        # a parameter of the brain module, which the optimiser receives
        "normalize_eeg": False,           # eeg_z enters ClipLoss un-normalised; only img_z is normalised
    }
