"""The reference code's model structure and training loop, kept only as the baseline our Trainer is measured against.

**Structure.** :class:`ReferenceTSConv` is NICE's ``PatchEmbedding`` + ``FlattenHead`` (``nice_stand.py``; ATM-S
``ATMS_retrieval.py`` uses the same) as separate modules: ``Conv2d(1, 40, (1, 25))`` over the whole 226-sample
output, ``AvgPool2d((1, 51), (1, 5))``, BatchNorm, ELU, ``Conv2d(40, 40, (C, 1))``, BatchNorm, ELU, Dropout, then
the ``Conv2d(40, 40, 1)`` projection and the time-major flatten. :func:`reference_structure` swaps it, with the same
weights, for every :class:`~bench.encoders.trunk.TSConvTrunk` of a method (NICE, ATM-S, MCDB's encoder); the
projector (``Proj_eeg``) is already the reference's layers in the reference's order.

**Loop.** :class:`ReferenceLoop` trains the way NICE and ATM do: float32 numpy arrays behind a
``torch.utils.data.Dataset`` that returns one sample per ``__getitem__``, a ``DataLoader(shuffle=True)`` in the main
process (``num_workers=0``, as both do) whose collate stacks the samples, a copy of every batch to the device, fp32,
``zero_grad`` / ``backward`` / ``step`` and ``loss.item()`` every step, and after every epoch a validation pass in
eval mode under ``no_grad`` through a second ``DataLoader`` (NICE: 740 training rows, the training batch size).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.encoders.trunk import N_FILTERS, POOL_KERNEL, POOL_STRIDE, TEMPORAL_KERNEL, TSConvTrunk
from bench.method import Batch, Method, TrainState
from bench.perf.peak import sync_device
from bench.protocols import EvalSet, TrainSet
from bench.train import build_optimizer

#: our TSConvTrunk's parameter prefixes → the reference PatchEmbedding's (``tsconv`` Sequential, ``projection``)
TRUNK_KEYS = {"temporal.0.": "tsconv.0.", "temporal.2.": "tsconv.2.", "spatial.0.": "tsconv.4.",
              "spatial.1.": "tsconv.5.", "pointwise.": "projection.0."}


class ReferenceTSConv(nn.Module):
    """``(batch, C, T)`` → ``(batch, 40 · T')`` through NICE's own module sequence (no fused layers)."""

    def __init__(self, n_chans: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.tsconv = nn.Sequential(
            nn.Conv2d(1, N_FILTERS, (1, TEMPORAL_KERNEL), (1, 1)),
            nn.AvgPool2d((1, POOL_KERNEL), (1, POOL_STRIDE)),
            nn.BatchNorm2d(N_FILTERS),
            nn.ELU(),
            nn.Conv2d(N_FILTERS, N_FILTERS, (n_chans, 1), (1, 1)),
            nn.BatchNorm2d(N_FILTERS),
            nn.ELU(),
            nn.Dropout(dropout),
        )
        self.projection = nn.Sequential(nn.Conv2d(N_FILTERS, N_FILTERS, (1, 1), stride=(1, 1)))

    @classmethod
    def from_trunk(cls, trunk: TSConvTrunk) -> "ReferenceTSConv":
        """The reference structure holding a copy of ``trunk``'s parameters and batch-norm statistics."""
        ref = cls(trunk.spatial[0].kernel_size[0], trunk.spatial[3].p)
        state = {}
        for key, value in trunk.state_dict().items():
            prefix = next(p for p in TRUNK_KEYS if key.startswith(p))
            state[TRUNK_KEYS[prefix] + key[len(prefix):]] = value.clone()
        ref.load_state_dict(state)
        return ref.to(trunk.pointwise.weight.device).train(trunk.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.projection(self.tsconv(x.unsqueeze(1)))         # (b, 40, 1, T')
        return h.flatten(2).transpose(1, 2).contiguous().view(x.shape[0], -1)  # 'b e h w -> b (h w) e', flatten


def reference_structure(method: Method) -> int:
    """Replace every TSConvTrunk inside ``method`` by :class:`ReferenceTSConv` with the same weights, in place;
    returns how many were replaced (0 for encoders without one, e.g. EEGProject)."""
    found = [(parent, name, child) for parent in method.modules() for name, child in parent.named_children()
             if isinstance(child, TSConvTrunk)]
    for parent, name, child in found:
        setattr(parent, name, ReferenceTSConv.from_trunk(child))
    return len(found)


class PerSampleDataset(Dataset):
    """Per-row float32 arrays (EEG, image and text targets expanded per row, as ATM's EEGDataset holds them)."""

    def __init__(self, train: TrainSet):
        self.eeg = np.asarray(train.eeg, dtype=np.float32)
        self.image = train.image[train.row_image]
        self.text = None if train.text is None else train.text[train.row_concept]
        self.concept, self.subject = train.row_concept, train.row_subject

    def __len__(self) -> int:
        return len(self.eeg)

    def __getitem__(self, i: int):
        text = self.text[i] if self.text is not None else np.zeros(0, dtype=np.float32)
        return self.eeg[i], self.image[i], text, self.concept[i], self.subject[i]


class ReferenceLoop:
    """The reference loop over ``train``, advanced ``steps`` batches at a time so it can alternate with ours."""

    def __init__(self, method: Method, train: TrainSet, train_cfg: dict, device: torch.device, batch_size: int):
        self.loader = DataLoader(PerSampleDataset(train), batch_size=batch_size, shuffle=True, num_workers=0,
                                 drop_last=True)
        self.method, self.device, self.batch_size = method.to(device).train(), device, batch_size
        self.optimizer = build_optimizer(method, train_cfg, fused=False)  # the reference's torch.optim.Adam(...)
        self.state = TrainState(epoch=1, epochs=1, step=0, steps_per_epoch=len(self.loader))
        self.has_text = train.text is not None
        self.batches = iter(self.loader)
        self.precision = "fp32"

    def fetch(self) -> Batch:
        """One batch as the reference assembles it: per-sample reads, collate, copies to the device."""
        eeg, image, text, concept, subject = next(self.batches)
        d = self.device
        return Batch(eeg=eeg.to(d), image=image.to(d), concept=concept.to(d), subject=subject.to(d),
                     text=text.to(d) if self.has_text else None)

    def run(self, steps: int) -> float:
        """Seconds for the next ``steps`` batches, from the DataLoader's first fetch to the last step's sync."""
        self.method.train()
        sync_device(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss, _ = self.method(self.fetch(), self.state)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # both references accumulate the epoch loss this way: one device sync per step
            self.state.step += 1
        sync_device(self.device)
        return time.perf_counter() - t0

    def validate(self, val: EvalSet) -> float:
        """Seconds for NICE's per-epoch validation: eval mode, ``no_grad``, a ``DataLoader`` over the validation rows
        at the training batch size, the EEG embedding and the symmetric InfoNCE loss against the image targets."""
        loader = DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(np.asarray(val.eeg, np.float32)),
                                                           torch.from_numpy(val.gallery)),
                            batch_size=self.batch_size, shuffle=False)
        self.method.eval()
        sync_device(self.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for eeg, image in loader:
                eeg_emb = nn.functional.normalize(self.method.encode_eeg(eeg.to(self.device), None), dim=-1)
                img_emb = nn.functional.normalize(self.method.encode_image(image.to(self.device)), dim=-1)
                logits = eeg_emb @ img_emb.t() / 0.07
                labels = torch.arange(len(eeg), device=self.device)
                loss = (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.t(), labels))
                loss.item()
        sync_device(self.device)
        self.method.train()
        return time.perf_counter() - t0
