"""SPR, stochastic perturbation regularization: Gaussian noise "in the modality optimization process" [paper].

Two readings [assumed]:

* ``grad`` (default): OGM-GE's "generalization enhancement" (github.com/GeWu-Lab/OGM-GE_CVPR2022 ``main.py``).
  After the backward pass, every perturbed gradient tensor ``g`` gets ``ε ~ N(0, (σ · std(g))²)``, with ``std``
  over the tensor's elements at that step (hence "dynamic"). OGM-GE uses σ = 1 and adds 1e-8 to the std; here a
  zero gradient gets no noise. The noise is drawn from a generator seeded by (run seed, step), so every DDP
  process adds the identical noise to its identical (all-reduced) gradient and the replicas never drift.
* ``feature``: noise on the adapter outputs during training, ``x + ε``, ``ε ~ N(0, (σ_t · std(x))²)``, with σ_t
  decaying over training; tied to the batch feature std so one σ suits raw and adapted features alike.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine", "constant", "window")


def noise_generator(device: torch.device, base_seed: int, step: int) -> torch.Generator:
    """A generator that depends on the run's seed and the optimiser step only: the same in every process."""
    return torch.Generator(device=device).manual_seed((int(base_seed) * 1_000_003 + int(step)) % (2**63 - 1))


def gradient_noise(grad: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``N(0, (σ · std(grad))²)`` of ``grad``'s shape; zero for a tensor whose std is undefined (one element)."""
    if grad.numel() < 2:
        return torch.zeros_like(grad)
    std = sigma * grad.detach().float().std()
    noise = torch.randn(grad.shape, generator=generator, device=grad.device, dtype=torch.float32)
    return (noise * std).to(grad.dtype)


def feature_sigma(schedule: str, sigma: float, progress: float, in_window: bool) -> float:
    """σ_t at training ``progress`` ∈ [0, 1]: linear or cosine decay to 0, constant, or σ inside the MCDB window."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return sigma * (1.0 - progress)
    if schedule == "cosine":
        return sigma * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return sigma
    if schedule == "window":
        return sigma if in_window else 0.0
    raise ValueError(f"spr_schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")


def perturb_features(x: torch.Tensor, sigma_t: float) -> torch.Tensor:
    """``x + N(0, (σ_t · std(x))²)``, the std taken over the whole batch tensor and not back-propagated through."""
    if sigma_t <= 0:
        return x
    return x + torch.randn_like(x) * (sigma_t * x.detach().std())
