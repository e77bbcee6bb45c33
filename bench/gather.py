"""``state.gather``: a per-row tensor of one chunk → the same tensor over the whole optimiser step, on every process.

A contrastive loss takes its negatives from the rows it sees. Without this, each process (DDP) and each accumulation
chunk would contrast only its own rows, so N processes or N chunks would not train like one process with the whole
batch. ``training_loss`` calls ``state.gather(t)`` on every per-row tensor its loss compares across rows (embeddings,
labels); the result holds the step's rows of every process, with gradient through this process's current chunk.

* DDP (open_clip's ``gather_features``, ``local_loss=False``): an all-gather without gradient, this process's slice
  replaced by the local tensor (with gradient). Rows come in process order (a permutation of the global batch, which
  the contrastive losses do not see).
* Accumulation (GradCache, Gao et al. 2021): the trainer first runs every chunk's ``training_loss`` under no_grad with
  ``state.recording`` set, so that each gather call caches its chunk's rows; then, per chunk with gradient, the call
  returns the cached rows with this chunk's rows substituted. The trainer restores the RNG state before each chunk's
  gradient pass (so dropout draws the masks the cache saw) and the buffers after the recording pass (so BatchNorm
  running statistics move once per chunk, as without it).

Gradient scale. Every process and every chunk computes the same loss L over the whole step; the trainer backpropagates
L / n_chunks per chunk and DDP averages over N processes. A parameter used by the loss itself (the logit scale) thus
gets (1/N)·Σ_ranks Σ_chunks (1/n_chunks)·∂L/∂s = ∂L/∂s, as in one process. A row reaches the loss only through the
chunk (and process) that holds it, so it would get 1/(N·n_chunks) of its share; the local rows' gradient is therefore
multiplied by N·n_chunks on the way back (the same total that ``torch.distributed.nn.all_gather`` gets by summing the
N identical losses' gradients in a reduce-scatter, without that collective in the backward pass).

Not covered: BatchNorm batch statistics remain per chunk and per process (SyncBatchNorm would be needed), and
dropout masks differ from a one-process run's (each process draws its own from the same seed).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def all_gather_rows(local: torch.Tensor, rank: int, counts: list[int]) -> torch.Tensor:
    """Every process's rows in process order; this process's rows are ``local`` itself (its gradient kept).

    ``counts[r]`` is process r's row count (they differ by one when the global batch does not divide evenly), so the
    rows are padded to the largest count for the collective and cut back after.
    """
    width = max(counts)
    padded = local.detach()
    if padded.shape[0] < width:
        padded = torch.cat([padded, padded.new_zeros((width - padded.shape[0], *padded.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    parts = [part[:n] for part, n in zip(parts, counts)]
    parts[rank] = local
    return torch.cat(parts)


class StepGather:
    """``state.gather`` for one optimiser step: ``counts`` rows per process, this process's rows in ``n_chunks``."""

    def __init__(self, rank: int, counts: list[int], n_chunks: int):
        self.rank, self.counts, self.n_chunks = rank, counts, n_chunks
        self.cache: list[list[torch.Tensor]] = []  # [gather call][chunk], filled by the recording pass
        self.chunk, self.calls, self.recording = 0, 0, False

    def begin(self, chunk: int, recording: bool) -> None:
        self.chunk, self.calls, self.recording = chunk, 0, recording

    @property
    def used(self) -> bool:
        """Whether the recording pass saw any gather call (a method that never gathers needs no recording pass)."""
        return bool(self.cache)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        call = self.calls
        self.calls += 1
        if self.recording:
            if self.chunk == 0:
                self.cache.append([])
            self.cache[call].append(t.detach())
            return t
        world = len(self.counts)
        factor = world * self.n_chunks
        rows = _ScaleGrad.apply(t, float(factor)) if t.requires_grad and factor != 1 else t
        if self.n_chunks > 1:
            parts = list(self.cache[call])
            parts[self.chunk] = rows
            rows = torch.cat(parts)
        return all_gather_rows(rows, self.rank, self.counts) if world > 1 else rows
