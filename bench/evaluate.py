"""ZeroShotEvaluator: retrieval accuracy of EEG embeddings against target features, by cosine similarity.

* Exact n-way top-1/top-5: query i is correct at k if fewer than k gallery rows of its fold score strictly higher
  than its own target (ties count in the query's favour; with float features they do not occur in practice).
* k-way (2/4/10/50/100, as ATM reports): for each query, ``repeats`` seeded draws of k−1 distractors from the other
  rows of its fold; top-1 for every k, top-5 for k ≥ 50. The draw depends only on (seed, n, k), so two methods
  are scored on identical distractor sets.
* Extra galleries, reported under ``galleries`` and never mixed with the main number: ``text`` (one prompt per
  concept) and ``centroid`` (NICE-style concept centres).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.protocols import EvalSet


def cosine_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return (q @ g.T).astype(np.float64)


def ranks_within_folds(sim: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of each query's own target among the gallery rows of its fold."""
    same_fold = fold[:, None] == fold[None, :]
    own = np.diag(sim)[:, None]
    return ((sim > own) & same_fold).sum(axis=1)


def topk_accuracy(ranks: np.ndarray, k: int) -> float:
    return float(100.0 * np.mean(ranks < k))


def kway_accuracy(sim: np.ndarray, k: int, repeats: int, seed: int) -> dict[str, float]:
    """Mean k-way top-1 (and top-5 for k ≥ 50) over ``repeats`` seeded distractor draws per query (single fold)."""
    n = sim.shape[0]
    if k > n:
        raise ValueError(f"{k}-way needs at least {k} gallery items, have {n}")
    rng = np.random.default_rng([seed, n, k])
    others = np.array([np.delete(np.arange(n), i) for i in range(n)])  # (n, n-1)
    top1 = np.empty((repeats, n))
    top5 = np.empty((repeats, n))
    own = np.diag(sim)
    for r in range(repeats):
        picks = rng.permuted(np.tile(np.arange(n - 1), (n, 1)), axis=1)[:, : k - 1]
        distractors = np.take_along_axis(others, picks, axis=1)
        beaten = (np.take_along_axis(sim, distractors, axis=1) > own[:, None]).sum(axis=1)
        top1[r], top5[r] = beaten < 1, beaten < 5
    out = {"top1": float(100.0 * top1.mean())}
    if k >= 50:
        out["top5"] = float(100.0 * top5.mean())
    return out


@dataclass
class Embedded:
    """A scored evaluation set: embeddings, similarity and metrics (kept for the run's .npz)."""

    eeg: np.ndarray
    gallery: np.ndarray
    similarity: np.ndarray
    metrics: dict


class ZeroShotEvaluator:
    def __init__(self, kway: list[int] | tuple[int, ...] = (2, 4, 10, 50, 100), kway_repeats: int = 100,
                 galleries: list[str] | tuple[str, ...] = ("image",), seed: int = 0, batch_size: int = 1024):
        unknown = set(galleries) - {"image", "text", "centroid"}
        if unknown:
            raise ValueError(f"unknown gallery {sorted(unknown)}; choose from image, text, centroid")
        self.kway, self.kway_repeats, self.galleries = list(kway), int(kway_repeats), list(galleries)
        self.seed, self.batch_size = seed, batch_size

    @classmethod
    def from_config(cls, cfg: dict) -> "ZeroShotEvaluator":
        e = cfg["eval"]
        return cls(kway=e["kway"], kway_repeats=e["kway_repeats"], galleries=e["galleries"])

    @torch.no_grad()
    def embed(self, method, data: EvalSet, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """(EEG embeddings, gallery embeddings) through the method's EEG encoder and image head, in eval mode."""
        was_training = method.training
        method.eval()
        try:
            outs = []
            for start in range(0, len(data), self.batch_size):
                sl = slice(start, start + self.batch_size)
                eeg = torch.as_tensor(data.eeg[sl], dtype=torch.float32, device=device)
                subject = None if data.subject is None else torch.as_tensor(data.subject[sl], device=device)
                outs.append(method.encode_eeg(eeg, subject).float().cpu())
            gallery = method.encode_image(torch.as_tensor(data.gallery, dtype=torch.float32, device=device))
            return torch.cat(outs).numpy(), gallery.float().cpu().numpy()
        finally:
            method.train(was_training)

    def retrieval(self, eeg_emb: np.ndarray, gallery_emb: np.ndarray, fold: np.ndarray) -> dict:
        sim = cosine_similarity(eeg_emb, gallery_emb)
        ranks = ranks_within_folds(sim, fold)
        return {"top1": topk_accuracy(ranks, 1), "top5": topk_accuracy(ranks, 5)}

    def validate(self, method, data: EvalSet, device="cpu") -> dict:
        """Validation top-1/top-5 (fold-wise retrieval over held-out training concepts)."""
        eeg, gallery = self.embed(method, data, device)
        return self.retrieval(eeg, gallery, data.fold)

    @torch.no_grad()
    def score(self, method, data: EvalSet, device="cpu") -> Embedded:
        """The test metrics: exact n-way top-1/top-5, chance levels, k-way, and the labelled extra galleries."""
        if len(np.unique(data.fold)) != 1:
            raise ValueError("the test set is one retrieval problem; got several folds")
        method.eval()  # scoring is deterministic: no dropout or feature noise in any gallery's encoder
        eeg, gallery = self.embed(method, data, device)
        sim = cosine_similarity(eeg, gallery)
        ranks = ranks_within_folds(sim, data.fold)
        n = len(data)
        metrics: dict = {"top1": topk_accuracy(ranks, 1), "top5": topk_accuracy(ranks, 5), "n_test": n,
                         "chance_top1": 100.0 / n, "chance_top5": 100.0 * min(5, n) / n,
                         "mean_rank": float(ranks.mean() + 1)}
        metrics["kway"] = {str(k): kway_accuracy(sim, k, self.kway_repeats, self.seed)
                           for k in self.kway if k < n}
        extra = {}
        for name in self.galleries:
            if name == "image":
                continue
            table = data.text if name == "text" else data.centroid
            if table is None:
                raise ValueError(f"gallery {name!r} requested but the test features have no {name} rows")
            encode = method.encode_text if name == "text" else method.encode_image
            emb = encode(torch.as_tensor(table, dtype=torch.float32, device=device)).float().cpu().numpy()[data.concept]
            r = ranks_within_folds(cosine_similarity(eeg, emb), data.fold)
            extra[name] = {"top1": topk_accuracy(r, 1), "top5": topk_accuracy(r, 5)}
        if extra:
            metrics["galleries"] = extra
        return Embedded(eeg=eeg, gallery=gallery, similarity=sim.astype(np.float32), metrics=metrics)
