"""Merging the sessions of one partition into (images, repetitions, C, T), streamed in blocks of images.

As in the references: image condition ``i`` (1-based) is row ``i − 1``; its repetitions are those of the sessions that
show it, concatenated in session order; then one permutation of the repetition axis, the same for every image, mixes
the sessions (``sklearn.utils.shuffle(arange(R), random_state=seed)``: a RandomState(seed) shuffle of ``arange(R)``).
Sessions are read from disk (float32 scratch files), a block of rows at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from bench.data.diskarray import DiskArray
from bench.data.errors import DataFormatError

BLOCK_BYTES = 48 * 2**20


@dataclass
class SessionPart:
    array: DiskArray  # (conditions in this session, reps, C, T)
    conditions: np.ndarray  # ascending condition codes of its rows


@dataclass
class MergePlan:
    n_conditions: int
    reps: int  # repetitions per image after merging
    member: np.ndarray  # (n_conditions, sessions) bool: does session s show condition i + 1

    def shape(self, part: SessionPart) -> tuple[int, int, int, int]:
        return (self.n_conditions, self.reps) + tuple(part.array.shape[2:])  # type: ignore[return-value]


def plan_merge(parts: list[SessionPart], what: str) -> MergePlan:
    codes = np.unique(np.concatenate([p.conditions for p in parts]))
    n = int(codes.max())
    if codes.min() != 1 or len(codes) != n:
        absent = sorted(set(range(1, n + 1)) - set(codes.tolist()))
        raise DataFormatError(f"{what}: image conditions must be 1..N with none missing; {len(absent)} absent "
                              f"(e.g. {absent[:5]})" if absent else f"{what}: condition codes start at {codes.min()}")
    member = np.zeros((n, len(parts)), dtype=bool)
    for s, part in enumerate(parts):
        member[part.conditions - 1, s] = True
    sessions_per_image = member.sum(axis=1)
    if sessions_per_image.min() != sessions_per_image.max():
        odd = int(np.flatnonzero(sessions_per_image != np.median(sessions_per_image))[0]) + 1
        raise DataFormatError(f"{what}: images are shown in differing numbers of sessions ({sessions_per_image.min()}"
                              f"..{sessions_per_image.max()}, e.g. condition {odd}); they cannot share one "
                              f"repetition axis")
    reps = {p.array.shape[1] for p in parts}
    if len(reps) != 1:
        raise DataFormatError(f"{what}: sessions keep different repetition counts {sorted(reps)}")
    return MergePlan(n, int(sessions_per_image[0]) * reps.pop(), member)


def rep_permutation(n: int, seed: int | None) -> np.ndarray:
    """The references' shuffle of ``n`` merged repetitions; identity when ``seed`` is None (no shuffle)."""
    order = np.arange(n)
    if seed is not None:
        np.random.RandomState(seed).shuffle(order)
    return order


def merged_blocks(parts: list[SessionPart], plan: MergePlan, order: np.ndarray,
                  block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    r = parts[0].array.shape[1]
    row_bytes = plan.reps * parts[0].array.row_nbytes // r
    step = max(1, block_bytes // max(1, row_bytes))
    slot = np.cumsum(plan.member, axis=1) - plan.member  # how many earlier sessions show each image
    for start in range(0, plan.n_conditions, step):
        stop = min(start + step, plan.n_conditions)
        out = np.empty((stop - start, plan.reps) + tuple(parts[0].array.shape[2:]), dtype=parts[0].array.dtype)
        for s, part in enumerate(parts):
            lo, hi = np.searchsorted(part.conditions, [start + 1, stop + 1])
            if lo == hi:
                continue
            rows = part.array.read_rows(int(lo), int(hi))
            images = part.conditions[lo:hi] - 1
            for k in np.unique(slot[images, s]):
                pick = slot[images, s] == k
                out[images[pick] - start, k * r:(k + 1) * r] = rows[pick]
        yield out[:, order]
