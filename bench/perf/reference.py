"""The reference-style training loop, kept only as the baseline our Trainer is measured against.

Written the way NICE (``nice_stand.py``) and ATM (``ATMS_retrieval.py``) train: float32 numpy arrays behind a
``torch.utils.data.Dataset`` that returns one sample per ``__getitem__``, a ``DataLoader(shuffle=True)`` in the main
process (``num_workers=0``, as both do) whose collate stacks the samples, a copy of every batch to the device, fp32,
``zero_grad`` / ``backward`` / ``step`` and ``loss.item()`` every step. The model, loss and optimiser are the method's
own, so only the data path and the step loop differ from :class:`bench.train.Trainer`.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.method import Batch, Method, TrainState
from bench.protocols import TrainSet
from bench.train import build_optimizer


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_throughput(method: Method, train: TrainSet, train_cfg: dict, device: torch.device, batch_size: int,
                         warmup: int, steps: int) -> dict:
    """Samples/s over ``steps`` batches after ``warmup`` batches; ``train`` must hold (warmup + steps) batches."""
    loader = DataLoader(PerSampleDataset(train), batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    if len(loader) < warmup + steps:
        raise ValueError(f"{len(train)} rows make {len(loader)} batches of {batch_size}; need {warmup + steps}")
    method.to(device).train()
    optimizer = build_optimizer(method, train_cfg)
    state = TrainState(epoch=1, epochs=1, step=0, steps_per_epoch=len(loader))
    has_text = train.text is not None
    t0, seen = time.perf_counter(), 0
    for i, (eeg, image, text, concept, subject) in enumerate(loader):
        if i == warmup:
            _sync(device)
            t0, seen = time.perf_counter(), 0
        if i == warmup + steps:
            break
        batch = Batch(eeg=eeg.to(device), image=image.to(device), concept=concept.to(device),
                      subject=subject.to(device), text=text.to(device) if has_text else None)
        loss, _ = method(batch, state)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # both references accumulate the epoch loss this way: one device sync per step
        state.step += 1
        seen += len(eeg)
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"samples_per_s": seen / elapsed, "step_s": elapsed / steps, "samples": seen, "precision": "fp32"}
