"""MCDB (HMAVD): EEG–image–text alignment with adapters, Modal Consistency Dynamic Balance and SPR.

Sun, Miao, Zhai, Duan, Long, "Decoding Visual Neural Representations by Multimodal with Dynamic Balancing",
arXiv 2509.03433 (Expert Systems with Applications). Only the abstract and a partial third-party review could be
read; methods/mcdb/SPEC.md tags every choice [paper], [review] or [assumed], and each [assumed]
choice is a key of :attr:`MCDB.defaults` (methods/mcdb/README.md, the method card).

Loss [review]: ``L = w·(k_img·(L_e→i + L_i→e) + k_txt·(L_e→t + L_t→e)) + λ_cos·L_cos`` on L2-normalised embeddings
in a shared space of the feature dimension, with one learnable logit scale.

What k reaches. ``loss`` mode: k weights the modality's CE terms, so it changes the update of the parameters those
terms share with others: the EEG encoder and the logit scale, and the image adapter (which L_cos also drives). The
text adapter (with ``cos_target=img``) gets gradient from the text terms only, so loss-mode k_txt scales its whole
gradient by a constant, which Adam/AdamW's update ignores (SGD's does not). ``grad`` mode: k multiplies the
learning rate of that modality's adapter parameter group for the step (:meth:`MCDB.after_backward` returns the
multipliers, the trainer applies them to that one ``optimizer.step()``), so the adapter's *update* is k times its
k = 1 update under Adam, AdamW and SGD alike; OGM-GE scales the gradient instead, which is the same thing only under
momentum-free SGD (Adam normalises a constant gradient scale away).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bench.ablation import FROM_FULL
from bench.encoders import build_encoder, nice_init_
from bench.losses import LogitScale, directional_clip_losses, multi_positive_losses
from bench.method import Batch, DataInfo, LossOutput, Method, TrainState
from bench.registry import register_method
from bench.methods.mcdb.adapters import ADAPTERS, build_adapter
from bench.methods.mcdb.balance import BalanceTracker, in_window, ogm_coefficients, positive_mass
from bench.methods.mcdb.perturbation import SCHEDULES, feature_sigma, gradient_noise, noise_generator, perturb_features
from bench.methods.mcdb.text import TEXT_LOSSES, TEXT_POSITIVES, all_concepts_alignment, text_alignment

MCDB_MODES = ("loss", "grad", "none")
SPR_MODES = ("grad", "feature", "none")
SPR_TARGETS = ("adapters", "eeg", "all")
COS_TARGETS = ("img", "txt", "img+txt")
COS_LOSSES = ("cosine", "symmetric_ce")

DEFAULTS: dict[str, Any] = {
    # model
    "encoder": "tsconv",            # any registered EEG encoder (bench list encoders)
    "encoder_kwargs": {},           # extra constructor arguments of that encoder
    "adapter": "residual",          # residual | bottleneck | none
    "adapter_dropout": 0.3,
    "adapter_shared": False,        # one adapter for image and text instead of one per modality
    "adapter_init": "nice",         # nice (N(0, 0.02) weights, as NICE's projectors) | torch (PyTorch default)
    "bottleneck_ratio": 0.25,
    "bottleneck_scale": 0.2,
    "use_text": True,
    "logit_scale_init": math.log(1 / 0.07),
    "learn_logit_scale": True,
    "logit_scale_max": 100.0,       # the scale (not its log) is clipped here, as CLIP does
    # loss
    "w": 0.2,
    "lambda_cos": 1.0,
    "cos_target": "img",            # img | txt | img+txt
    "cos_loss": "cosine",           # cosine: mean(1 - cos) | symmetric_ce: NICE's symmetric CE (its `loss_cos`)
    "text_loss": "multi_positive",  # multi_positive | label_targets | clip
    "text_positives": "batch",      # batch: the batch's concept texts | all_concepts: every training concept text
    # MCDB
    "mcdb": "loss",                 # loss | grad | none
    "mcdb_alpha": 0.1,
    "mcdb_start": 0.0,              # window [start, end) as fractions of training epochs
    "mcdb_end": 0.5,
    # SPR
    "spr": "grad",                  # grad | feature | none
    "spr_sigma": 1.0,               # grad: noise std = spr_sigma · std(gradient tensor)
    "spr_targets": "adapters",      # grad: adapters | eeg | all (adapters and EEG encoder)
    "spr_matrices_only": True,      # grad: weight matrices/kernels only (OGM-GE perturbs conv kernels only)
    "spr_window": True,             # grad: only inside the MCDB window (OGM-GE); false = every step
    "spr_feature_sigma": 0.1,       # feature: noise std = σ_t · std(adapter output)
    "spr_schedule": "linear",       # feature: linear | cosine | constant | window
}


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"mcdb: {name} must be one of {', '.join(options)}, not {value!r}")
    return value


@register_method("mcdb", description="HMAVD/MCDB: EEG-image-text alignment with adapters, modal balance (MCDB) "
                                     "and stochastic perturbation regularization (SPR)",
                 citation="Sun et al., Decoding Visual Neural Representations by Multimodal with Dynamic Balancing, "
                          "arXiv 2509.03433")
class MCDB(Method):
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    requires_text: ClassVar[bool] = True
    #: cumulative ablation (spec §5.4): each variant adds one component; the full method (+SPR) is variant None.
    #: A component a row has is pinned to the full method's value (FROM_FULL: e.g. its adapter kind), one it lacks
    #: to off, so the rows add exactly what the full row has and a --set that turns a component off is refused
    ablations: ClassVar[dict[str, dict[str, Any]]] = {
        "base": {"method.use_text": False, "method.adapter": "none", "method.mcdb": "none", "method.spr": "none",
                 "method.cos_target": "img"},
        "+text": {"method.use_text": FROM_FULL, "method.adapter": "none", "method.mcdb": "none", "method.spr": "none"},
        "+adapter": {"method.use_text": FROM_FULL, "method.adapter": FROM_FULL, "method.mcdb": "none",
                     "method.spr": "none"},
        "+mcdb": {"method.use_text": FROM_FULL, "method.adapter": FROM_FULL, "method.mcdb": FROM_FULL,
                  "method.spr": "none"},
    }
    ablation_full_label: ClassVar[str] = "+spr (full)"  # the last component the full method adds

    def __init__(self, info: DataInfo, **hparams: Any):
        super().__init__(info, **hparams)
        hp = self.hparams
        self._validate(hp)
        dim = info.feature_dim
        self.eeg_encoder = build_encoder(hp["encoder"], info, dim, hp["encoder_kwargs"])

        def adapter() -> nn.Module:
            module = build_adapter(hp["adapter"], dim, hp["adapter_dropout"], hp["bottleneck_ratio"],
                                   hp["bottleneck_scale"])
            return nice_init_(module) if hp["adapter_init"] == "nice" else module

        self.image_adapter = adapter()
        self.text_adapter = None
        if hp["use_text"]:
            self.text_adapter = self.image_adapter if hp["adapter_shared"] else adapter()
        self.logit_scale = LogitScale(hp["logit_scale_init"], "exp", bool(hp["learn_logit_scale"]),
                                      max_scale=float(hp["logit_scale_max"]))
        self.balance = BalanceTracker()
        self._noise_seed = 0
        if hp["spr"] == "grad" and not list(self._spr_parameters()):
            raise ValueError(f"mcdb: spr=grad with spr_targets={hp['spr_targets']!r} finds no tensor to perturb "
                             f"(adapter={hp['adapter']!r}, spr_matrices_only={hp['spr_matrices_only']})")

    @staticmethod
    def _validate(hp: dict) -> None:
        _choice("adapter", hp["adapter"], ADAPTERS)
        _choice("adapter_init", hp["adapter_init"], ("nice", "torch"))
        _choice("text_loss", hp["text_loss"], TEXT_LOSSES)
        _choice("cos_target", hp["cos_target"], COS_TARGETS)
        _choice("cos_loss", hp["cos_loss"], COS_LOSSES)
        _choice("text_positives", hp["text_positives"], TEXT_POSITIVES)
        if hp["text_positives"] == "all_concepts" and hp["text_loss"] != "multi_positive":
            raise ValueError("mcdb: text_loss chooses the in-batch form of the text terms; text_positives=all_concepts "
                             "is its own form (classification among all concept texts), so leave text_loss at its "
                             "default")
        _choice("mcdb", hp["mcdb"], MCDB_MODES)
        _choice("spr", hp["spr"], SPR_MODES)
        _choice("spr_targets", hp["spr_targets"], SPR_TARGETS)
        _choice("spr_schedule", hp["spr_schedule"], SCHEDULES)
        in_window(1, 1, hp["mcdb_start"], hp["mcdb_end"])  # validates the window
        for key in ("w", "lambda_cos", "mcdb_alpha", "spr_sigma", "spr_feature_sigma"):
            if hp[key] < 0:
                raise ValueError(f"mcdb: {key} must be >= 0, got {hp[key]!r}")
        if not hp["use_text"]:
            if hp["mcdb"] != "none":
                raise ValueError("mcdb: MCDB balances image against text, so mcdb needs use_text=true "
                                 "(or set mcdb=none)")
            if hp["cos_target"] != "img":
                raise ValueError(f"mcdb: cos_target={hp['cos_target']!r} needs use_text=true")
            if hp["text_positives"] != "batch":
                raise ValueError("mcdb: text_positives=all_concepts needs use_text=true")
        if hp["mcdb"] == "grad" and (hp["adapter"] == "none" or hp["adapter_shared"]):
            raise ValueError("mcdb: mcdb=grad scales each modality's adapter step, so it needs separate "
                             "adapters (adapter != none, adapter_shared=false); mcdb=loss works without")
        if hp["mcdb"] != "none" and hp["w"] == 0:
            raise ValueError("mcdb: with w=0 the CE terms that k weights (loss) or that drive the text adapter (grad) "
                             "are off, so MCDB cannot act; set w > 0 or mcdb=none")

    # --- the model ------------------------------------------------------------------------------------------------
    def encode_eeg(self, eeg: torch.Tensor, subject: torch.Tensor | None) -> torch.Tensor:
        return self.eeg_encoder(eeg, subject)

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_adapter(features)

    def encode_text(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.text_adapter is None else self.text_adapter(features)

    def scale(self) -> torch.Tensor:
        return self.logit_scale()

    # --- training -------------------------------------------------------------------------------------------------
    def _window(self, state: TrainState) -> bool:
        return in_window(state.epoch, state.epochs, self.hparams["mcdb_start"], self.hparams["mcdb_end"])

    def _feature_sigma(self, state: TrainState) -> float:
        if self.hparams["spr"] != "feature":
            return 0.0
        progress = state.step / max(1, state.epochs * state.steps_per_epoch)
        return feature_sigma(self.hparams["spr_schedule"], self.hparams["spr_feature_sigma"], progress,
                             self._window(state))

    def training_loss(self, batch: Batch, state: TrainState) -> LossOutput:
        hp = self.hparams
        scale = self.scale()
        sigma_t = self._feature_sigma(state)
        # every term over the whole step's rows on every process (state.gather): DDP and accumulation train like one
        eeg = state.gather(F.normalize(self.encode_eeg(batch.eeg, batch.subject), dim=-1))
        img = state.gather(F.normalize(perturb_features(self.encode_image(batch.image), sigma_t), dim=-1))
        concept = state.gather(batch.concept)
        l_img = sum(directional_clip_losses(eeg, img, scale))
        s_img = positive_mass(scale * eeg @ img.t(), torch.eye(len(eeg), dtype=torch.bool, device=eeg.device))
        l_txt, txt, s_txt = l_img.new_zeros(()), None, None
        if hp["use_text"]:
            if batch.text is None:
                raise ValueError("mcdb: use_text=true but the batch carries no text features")
            txt, eeg_to_txt, txt_to_eeg, s_txt = self._text_terms(batch, state, eeg, scale, sigma_t, concept)
            l_txt = eeg_to_txt + txt_to_eeg

        k_img, k_txt, scores = self._coefficients(s_img, s_txt, state)
        loss_k_img, loss_k_txt = (k_img, k_txt) if hp["mcdb"] == "loss" else (1.0, 1.0)
        l_cos = self._cosine_loss(eeg, img, txt, scale, concept)
        loss = hp["w"] * (loss_k_img * l_img + loss_k_txt * l_txt) + hp["lambda_cos"] * l_cos
        logs = {"l_img": l_img.detach(), "l_txt": l_txt.detach(), "l_cos": l_cos.detach(), "k_img": k_img,
                "k_txt": k_txt, "logit_scale": scale.detach(), **scores}
        return LossOutput(loss, logs)

    def _coefficients(self, s_img: tuple, s_txt: tuple | None, state: TrainState
                      ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """k_img, k_txt from the chance-normalised batch confidences, averaged over DDP processes so every replica
        uses the same k. ``s_img``/``s_txt`` are (per-row mass, per-row mass over chance)."""
        one = s_img[0].new_ones(())
        txt = (one, one) if s_txt is None else (s_txt[0].mean(), s_txt[1].mean())
        # order: raw image, raw text, normalised image, normalised text
        s = state.all_reduce_mean(torch.stack([s_img[0].mean(), txt[0], s_img[1].mean(), txt[1]]))
        if self.hparams["mcdb"] != "none" and self._window(state):
            k_img, k_txt = ogm_coefficients(s[2], s[3], float(self.hparams["mcdb_alpha"]))
        else:
            k_img, k_txt = one, one
        scores = {"s_img": s[0], "s_img_norm": s[2]}
        if s_txt is not None:
            scores.update(s_txt=s[1], s_txt_norm=s[3])
        if not state.recording:  # the recording pass of an accumulated step repeats the chunk: count it once
            self.balance.add(k_img=k_img, k_txt=k_txt, **scores)
        return k_img, k_txt, scores

    def _text_terms(self, batch: Batch, state: TrainState, eeg: torch.Tensor, scale: torch.Tensor, sigma_t: float,
                    concept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-row text embeddings, L_e→t, L_t→e, per-row confidence) under ``text_positives``."""
        if self.hparams["text_positives"] == "batch":
            txt = state.gather(F.normalize(perturb_features(self.encode_text(batch.text), sigma_t), dim=-1))
            return txt, *text_alignment(self.hparams["text_loss"], eeg, txt, concept, scale)
        if state.concept_text is None:
            raise ValueError("mcdb: text_positives=all_concepts needs the training concept texts (state.concept_text)")
        # the whole table goes through the adapter every step, so every concept text is a trained negative; it is the
        # same on every process, so it is not gathered
        table = F.normalize(perturb_features(self.encode_text(state.concept_text), sigma_t), dim=-1)
        txt = table[torch.searchsorted(state.concept_ids, concept)]
        return txt, *all_concepts_alignment(eeg, table, state.concept_ids, concept, scale)

    def _cosine_loss(self, eeg: torch.Tensor, img: torch.Tensor, txt: torch.Tensor | None, scale: torch.Tensor,
                     concept: torch.Tensor) -> torch.Tensor:
        """L_cos against ``cos_target``: ``cosine`` = mean(1 − cos) [assumed]; ``symmetric_ce`` = NICE's `loss_cos`,
        the mean of the two CE directions (multi-positive for text, whose rows repeat within a concept)."""
        target, symmetric = self.hparams["cos_target"], self.hparams["cos_loss"] == "symmetric_ce"
        terms = []
        if target in ("img", "img+txt"):
            terms.append(sum(directional_clip_losses(eeg, img, scale)) / 2 if symmetric
                         else (1 - (eeg * img).sum(-1)).mean())
        if target in ("txt", "img+txt"):
            terms.append(sum(multi_positive_losses(eeg, txt, concept, scale)) / 2 if symmetric
                         else (1 - (eeg * txt).sum(-1)).mean())
        return sum(terms) / len(terms)

    # --- gradient hooks -------------------------------------------------------------------------------------------
    def _spr_parameters(self) -> Iterator[nn.Parameter]:
        hp = self.hparams
        modules = {"adapters": [self.image_adapter, self.text_adapter], "eeg": [self.eeg_encoder],
                   "all": [self.image_adapter, self.text_adapter, self.eeg_encoder]}[hp["spr_targets"]]
        seen = set()
        for module in modules:
            for p in (module.parameters() if module is not None else ()):
                if p.requires_grad and id(p) not in seen and (p.ndim >= 2 or not hp["spr_matrices_only"]):
                    seen.add(id(p))
                    yield p

    def on_train_start(self, state: TrainState) -> None:
        # the harness seeds every process alike, so this base seed (hence the SPR noise) is the same in all of them
        self._noise_seed = torch.initial_seed()
        self.balance.reset()

    def checkpoint_state(self) -> dict[str, Any]:
        """The SPR noise seed (set in ``on_train_start``) and the balance tracker's running sums: the Python-level
        state a resumed run needs (``bench/checkpoint.py``)."""
        return {"noise_seed": int(self._noise_seed), "balance": self.balance.state()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self._noise_seed = int(state["noise_seed"])
        self.balance.load(state["balance"])

    def param_groups(self) -> list[dict]:
        """One named optimiser group per module whose step grad-mode MCDB may scale (``after_backward``'s keys)."""
        modules = {"eeg": [self.eeg_encoder, self.logit_scale], "image_adapter": [self.image_adapter],
                   "text_adapter": [self.text_adapter] if self.text_adapter is not self.image_adapter else []}
        groups, seen = [], set()
        for name, parts in modules.items():
            params = [p for m in parts if m is not None for p in m.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append({"name": name, "params": params})
        return groups

    def after_backward(self, state: TrainState) -> dict[str, float] | None:
        """grad-mode SPR: g ← g + N(0, (σ·std(g))²) on the perturbed tensors; grad-mode MCDB: the step multipliers
        ``{"image_adapter": k_img, "text_adapter": k_txt}`` for the trainer's next ``optimizer.step()``.

        k is the mean over the step's accumulation chunks of the k each chunk's ``training_loss`` logged
        (``state.chunk_logs``); it scales the group's learning rate, not its gradient, because Adam and AdamW
        normalise a constant gradient scale away (module docstring). The gradients here are already all-reduced, k
        is the same in every process, and the noise generator depends on (seed, step) only.
        """
        hp = self.hparams
        window = self._window(state)
        if hp["spr"] == "grad" and (window or not hp["spr_window"]) and hp["spr_sigma"] > 0:
            generator = None
            for p in self._spr_parameters():
                if p.grad is None:
                    continue
                if generator is None:
                    generator = noise_generator(p.grad.device, self._noise_seed, state.step)
                p.grad.add_(gradient_noise(p.grad, float(hp["spr_sigma"]), generator))
        if hp["mcdb"] != "grad" or not window or not state.chunk_logs:
            return None
        # one host sync per step, in grad mode inside the window only: the optimiser takes a Python lr
        return {group: float(torch.stack([logs[key] for logs in state.chunk_logs]).mean())
                for group, key in (("image_adapter", "k_img"), ("text_adapter", "k_txt"))}

    def on_epoch_end(self, state: TrainState) -> dict[str, float]:
        """Per-epoch means of k_img, k_txt, the raw confidences s_img, s_txt and their chance-normalised s_img_norm,
        s_txt_norm (into the run record's ``extras``), and the window flag."""
        out = self.balance.means()
        self.balance.reset()
        out["mcdb_active"] = float(self.hparams["mcdb"] != "none" and self._window(state))
        return out
