"""ATM-S ("Adaptive Thinking Mapper"): channel tokens + subject token, one transformer layer, TSConv, projector.

Li et al., "Visual Decoding and Reconstruction via EEG Embeddings with Guided Diffusion", NeurIPS 2024
(arXiv 2403.07721); reference code github.com/dongyangli-del/EEG_Image_decode (``Retrieval/ATMS_retrieval.py``,
``models/subject_layers/Embed.py``, ``Transformer_EncDec.py``, ``SelfAttention_Family.py``; ``models/atms.py``).

Each channel's time series is one token (``Linear(n_times → d_model)``, iTransformer style, no positional
encoding); a learned subject token is prepended; one post-norm encoder layer and a final LayerNorm follow; the
63 channel tokens form a ``(C × d_model)`` matrix that NICE's TSConv trunk and the residual projector map to
``n_outputs``. At the paper shape (63 × 250 → 1024, 10 subjects) it has 3,075,412 parameters.

Deviations from the reference code:

- All ``n_chans`` channel tokens are kept (``token_slice="channels"``: ``[:, 1:]``, as the refactored
  ``models/atms.py``). The paper-era scripts (``ATMS_retrieval.py``) keep ``[:, :63]``, i.e. the subject token plus
  the first 62 channels, dropping the last (O2); ``token_slice="paper"`` reproduces that (``[:, :n_chans]``), with
  the same parameters since the trunk still sees ``n_chans`` rows. The last channel then reaches the trunk only
  through the attention layer's mixing, and the subject token directly.
- ``subject`` holds 0-based indices and the fallback to the shared token is per sample (ids outside
  ``[0, n_subjects)`` or ``subject=None``). The reference parses ``sub-XX`` to XX, so sub-01 … sub-09 use rows
  1 … 9, sub-10 falls back to the shared token, and a single unknown id sends the whole batch to it.
- Modules the reference builds but never uses in ``forward`` are left out: ``subject_wise_linear``, the
  ``timeF`` temporal embedding, the positional-embedding buffer and two mask tokens. The temperature
  (``logit_scale``) belongs to the loss here.
- As in the reference, the attention width is ``n_heads · (d_model // n_heads)`` (248 for 250 / 4 heads) and all
  weights keep PyTorch's default init (ATM does not apply NICE's init).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.encoders.base import EEGEncoderMixin, check_probability, positive_int
from bench.encoders.projector import ResidualProjector
from bench.encoders.trunk import TSConvTrunk
from bench.registry import register_encoder

#: which ``n_chans`` encoder tokens reach TSConv: ``channels`` = the channel tokens (``[:, 1:]``), ``paper`` = the
#: paper-era scripts' ``[:, :n_chans]`` (subject token + every channel but the last)
TOKEN_SLICES = ("channels", "paper")


class TokenSelfAttention(nn.Module):
    """Multi-head self-attention whose width need not divide by the head count (250 tokens-dims, 4 heads)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if positive_int("n_heads", n_heads) > d_model:
            raise ValueError(f"n_heads={n_heads} exceeds d_model={d_model}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        inner = self.head_dim * n_heads
        self.query = nn.Linear(d_model, inner)
        self.key = nn.Linear(d_model, inner)
        self.value = nn.Linear(d_model, inner)
        self.out = nn.Linear(inner, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.n_heads, self.head_dim).transpose(1, 2)

        h = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(h.transpose(1, 2).reshape(batch, tokens, -1))


class PostNormEncoderLayer(nn.Module):
    """``x = LN(x + Drop(Attn(x)))``; ``x = LN(x + Drop(Lin(Drop(GELU(Lin(x))))))`` (iTransformer's EncoderLayer)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attention = TokenSelfAttention(d_model, n_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d_model, positive_int("d_ff", d_ff)), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(d_ff, d_model), nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.ffn(x))


@register_encoder("atms", description="ATM-S: channel tokens + subject token, 1-layer transformer, TSConv, projector "
                                      "(token_slice: 'channels', 'paper')",
                  citation="Li et al., Visual Decoding and Reconstruction via EEG Embeddings with Guided Diffusion, "
                           "NeurIPS 2024 (arXiv 2403.07721)")
class ATMSEncoder(EEGEncoderMixin, nn.Module):
    def __init__(self, n_chans: int | None, n_times: int, n_outputs: int, sfreq: float | None = None,
                 chs_info: Sequence[Any] | None = None, n_subjects: int = 10, d_model: int | None = None,
                 n_heads: int = 4, d_ff: int = 256, dropout: float = 0.25, trunk_dropout: float = 0.5,
                 proj_dropout: float = 0.5, token_slice: str = "channels") -> None:
        super().__init__(n_chans=n_chans, n_times=n_times, n_outputs=n_outputs, sfreq=sfreq, chs_info=chs_info)
        if token_slice not in TOKEN_SLICES:
            raise ValueError(f"token_slice must be one of {TOKEN_SLICES}, got {token_slice!r}")
        self.token_slice = token_slice
        d_model = n_times if d_model is None else positive_int("d_model", d_model)
        dropout = check_probability("dropout", dropout)
        self.n_subjects = positive_int("n_subjects", n_subjects)
        self.d_model = d_model
        self.embedding = nn.Linear(n_times, d_model)
        self.subject_tokens = nn.Embedding(n_subjects, d_model)
        self.shared_token = nn.Parameter(torch.randn(d_model))
        self.embedding_dropout = nn.Dropout(dropout)
        self.encoder_layer = PostNormEncoderLayer(d_model, n_heads, d_ff, dropout)
        self.final_norm = nn.LayerNorm(d_model)
        # TSConv's time axis is the token width here, so a short d_model is reported as a short window.
        self.trunk = TSConvTrunk(self.n_chans, d_model, dropout=check_probability("trunk_dropout", trunk_dropout))
        self.projector = ResidualProjector(self.trunk.out_features, n_outputs,
                                           dropout=check_probability("proj_dropout", proj_dropout))

    def subject_token(self, subject: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(batch, 1, d_model)``: each sample's subject token, the shared token where the subject is unknown."""
        shared = self.shared_token.expand(batch, 1, -1)
        if subject is None:
            return shared
        known = (subject >= 0) & (subject < self.n_subjects)
        own = self.subject_tokens(torch.where(known, subject, torch.zeros_like(subject))).unsqueeze(1)
        return torch.where(known.view(batch, 1, 1), own, shared)

    def forward(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x, subject)
        tokens = torch.cat([self.subject_token(subject, x.shape[0]), self.embedding(x)], dim=1)
        tokens = self.final_norm(self.encoder_layer(self.embedding_dropout(tokens)))
        kept = tokens[:, 1:] if self.token_slice == "channels" else tokens[:, :self.n_chans]
        return self.projector(self.trunk(kept))
