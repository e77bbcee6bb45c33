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


class ReferenceLoop:
    """The reference loop over ``train``, advanced ``steps`` batches at a time so it can alternate with ours."""

    def __init__(self, method: Method, train: TrainSet, train_cfg: dict, device: torch.device, batch_size: int):
        self.loader = DataLoader(PerSampleDataset(train), batch_size=batch_size, shuffle=True, num_workers=0,
                                 drop_last=True)
        self.method, self.device, self.batch_size = method.to(device).train(), device, batch_size
        self.optimizer = build_optimizer(method, train_cfg)
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
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss, _ = self.method(self.fetch(), self.state)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # both references accumulate the epoch loss this way: one device sync per step
            self.state.step += 1
        _sync(self.device)
        return time.perf_counter() - t0
