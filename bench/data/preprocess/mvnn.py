"""Multivariate noise normalisation: the session's shrunk noise covariance, its inverse square root, and whitening.

The covariance estimator is what ``sklearn.discriminant_analysis._cov(X, shrinkage='auto')`` computes (sklearn is not
a dependency, so it is written out here, batched): standardise each channel, Ledoit–Wolf shrinkage towards a scaled
identity, undo the standardisation. Per condition the references average it

* ``epochs`` (NICE): over repetitions, each trial's covariance taken over its time points;
* ``time`` (official): over time points, each time point's covariance taken over the condition's repetitions;

then over conditions. Every condition has the same number of repetitions and samples, so both are plain means over
all (condition, repetition) resp. (condition, time point) estimates, accumulated block by block.
"""
from __future__ import annotations

import numpy as np

from bench.data.errors import DataFormatError

BLOCK_BYTES = 64 * 2**20


def shrunk_covariances(x: np.ndarray) -> np.ndarray:
    """(B, p, p) Ledoit–Wolf covariances of B sample matrices ``x`` (B, n samples, p features), standardised first."""
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape[1], x.shape[2]
    x = x - x.mean(axis=1, keepdims=True)
    scale = np.sqrt(np.mean(x**2, axis=1))  # (B, p); ddof=0 like StandardScaler
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0  # StandardScaler leaves constant features unscaled
    z = x / scale[:, None, :]
    s = np.matmul(z.transpose(0, 2, 1), z) / n
    trace = np.trace(s, axis1=1, axis2=2)
    mu = trace / p
    delta_ = np.sum(s**2, axis=(1, 2))
    beta_ = np.sum(np.sum(z**2, axis=2) ** 2, axis=1)
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2 * mu * trace + p * mu**2) / p
    beta = np.minimum(beta, delta)
    shrinkage = np.divide(beta, delta, out=np.zeros_like(beta), where=delta > 0)
    cov = (1 - shrinkage)[:, None, None] * s
    cov[:, np.arange(p), np.arange(p)] += (shrinkage * mu)[:, None]
    return scale[:, :, None] * cov * scale[:, None, :]


def mean_noise_covariance(data: np.ndarray, dim: str) -> np.ndarray:
    """(C, C) mean shrunk covariance of ``data`` (conditions, reps, C, T) along ``dim`` ('epochs' or 'time')."""
    n_cond, reps, c, t = data.shape
    per_cond = (reps if dim == "epochs" else t) * c * c * 8 * 3
    step = max(1, BLOCK_BYTES // max(1, per_cond))
    total = np.zeros((c, c))
    for start in range(0, n_cond, step):
        block = np.asarray(data[start:start + step], dtype=np.float64)
        if dim == "epochs":
            samples = block.reshape(-1, c, t).transpose(0, 2, 1)  # each trial: its T samples of C channels
        elif dim == "time":
            samples = block.transpose(0, 3, 1, 2).reshape(-1, reps, c)  # each (condition, time): its reps
        else:
            raise ValueError(f"mvnn_dim must be 'epochs' or 'time', got {dim!r}")
        total += shrunk_covariances(samples).sum(axis=0)
    count = n_cond * (reps if dim == "epochs" else t)
    return total / count


def inverse_sqrt(cov: np.ndarray, what: str = "noise covariance") -> np.ndarray:
    """The symmetric Σ^(−1/2) (equal to scipy's fractional_matrix_power(Σ, −0.5) for a positive-definite Σ)."""
    cov = (cov + cov.T) / 2
    values, vectors = np.linalg.eigh(cov)
    if not np.all(np.isfinite(values)) or values.min() <= values.max() * 1e-12:
        raise DataFormatError(f"the {what} is singular (eigenvalues {values.min():.3g}…{values.max():.3g}); a flat "
                              f"or duplicated channel cannot be whitened")
    return (vectors / np.sqrt(values)) @ vectors.T


def whiten_(data: np.ndarray, w: np.ndarray) -> None:
    """Apply ``w`` to the channels of ``data`` (conditions, reps, C, T) in place, block by block."""
    w32 = w.astype(np.float32)
    step = max(1, BLOCK_BYTES // max(1, data[0].nbytes))
    for start in range(0, len(data), step):
        data[start:start + step] = np.matmul(w32, data[start:start + step])
