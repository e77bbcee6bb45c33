"""ZeroShotEvaluator: retrieval accuracy of EEG embeddings against target features, by cosine similarity.

The scoring rules (``SCORING_VERSION`` names them; a record made under other rules is recomputed):

* **Ties count by expectation.** Query i's target is compared with the other gallery rows of its fold; with ``b``
  rows scoring strictly higher and ``t`` others scoring exactly the same, a random tie-break puts it in the top k with
  probability ``clip((k - b) / (t + 1), 0, 1)``. A constant or query-independent embedding therefore scores exactly
  chance (k/n), never 100 %.
* **Non-finite output fails the run.** NaN/Inf in the EEG or gallery embeddings raise :class:`EvaluationError`
  naming the partition and the method; nothing is scored.
* **Per-sample embeddings.** The galleries are embedded before any query. Each embedding may depend only on its own
  input and the trained model: a copy of the method made before it sees any test input embeds the queries again in
  a shuffled order and in batches of 1, 7 and 13, before any gallery; any difference beyond float tolerance fails
  the run ("encode_eeg is not per-sample").
* **Exact k-way** (2/4/10/…, as ATM reports): the expected accuracy over every draw of k−1 distractors among the
  other n−1 rows, in closed form (multivariate hypergeometric over distractors that beat, tie or lose to the
  target), with ties by expectation as above; top-5 is reported for k ≥ 50. No seed, no draw noise.
* Extra galleries, reported under ``galleries`` and never mixed with the main number: ``text`` (one prompt per
  concept) and ``centroid`` (NICE-style concept centres), always by cosine.
* The main number ranks against the test images' features by cosine (``eval.main_gallery: image``,
  ``eval.similarity: cosine``). Only the published protocols may replay NICE's scoring instead: the concept centres
  (``main_gallery: centroid``) and ``dot`` = the L2-normalised EEG embedding · the raw gallery embedding (NICE's
  ``100·ê·c``; the factor does not change ranks). The record names both (``metrics.main_gallery``,
  ``metrics.similarity``); when they are not the honest pair, ``galleries.image`` carries the honest number beside.
  These are new choices, not changed rules: every earlier record means what it meant, so ``SCORING_VERSION`` stays.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import gammaln

from bench.config_rules import GALLERIES, kway_values
from bench.errors import UserError
from bench.protocols import EvalSet

#: bump whenever what a score means changes (ties, k-way, per-sample rules): records of another version are stale.
#: 1: strict ranks (ties as hits), sampled k-way. 2: ties by expectation, exact k-way, per-sample check.
SCORING_VERSION = 2
#: largest difference allowed between unit-normalised embeddings of one input under two batchings (float32 GEMMs
#: of different shapes differ by ~1e-6; anything that reads other samples differs by far more)
PER_SAMPLE_TOLERANCE = 1e-3


class EvaluationError(UserError, RuntimeError):
    """The method's embeddings cannot be scored: non-finite, or not per-sample."""


def cosine_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return (q @ g.T).astype(np.float64)


def dot_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """NICE's test score ``100·ê·c`` without the factor: unit-normalised queries against the gallery as it is (the
    centres' norms, 0.74–0.98 in NICE's file, weigh in)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return (q @ gallery.T).astype(np.float64)


SIMILARITY = {"cosine": cosine_similarity, "dot": dot_similarity}


@dataclass(frozen=True)
class RankCounts:
    """Per query: gallery rows of its fold scoring strictly above its target (``beaten``) and exactly equal to it
    (``tied``, the target excluded)."""

    beaten: np.ndarray
    tied: np.ndarray

    def hit_probability(self, k: int) -> np.ndarray:
        """P(target in the top k) under a uniformly random order of the tied rows."""
        return np.clip((k - self.beaten) / (self.tied + 1.0), 0.0, 1.0)

    def topk(self, k: int) -> float:
        return float(100.0 * self.hit_probability(k).mean())

    def mean_rank(self) -> float:
        """Expected 1-based rank of the target."""
        return float((self.beaten + self.tied / 2.0).mean() + 1.0)


def rank_counts(sim: np.ndarray, fold: np.ndarray) -> RankCounts:
    same_fold = fold[:, None] == fold[None, :]
    np.fill_diagonal(same_fold, False)
    own = np.diag(sim)[:, None]
    return RankCounts(beaten=((sim > own) & same_fold).sum(axis=1), tied=((sim == own) & same_fold).sum(axis=1))


def _log_comb(n: np.ndarray, r: np.ndarray) -> np.ndarray:
    """log C(n, r), -inf where r < 0 or r > n."""
    n, r = np.broadcast_arrays(np.asarray(n, dtype=np.float64), np.asarray(r, dtype=np.float64))
    ok = (r >= 0) & (r <= n)
    out = np.full(n.shape, -np.inf)
    out[ok] = gammaln(n[ok] + 1) - gammaln(r[ok] + 1) - gammaln(n[ok] - r[ok] + 1)
    return out


def kway_hit_probability(counts: RankCounts, n: int, k: int, m: int) -> np.ndarray:
    """Per query, P(target in the top m) when k−1 distractors are drawn uniformly without replacement from the
    n−1 other rows: a sum over G beaten and T tied distractors drawn (only G < m can hit)."""
    b, t = counts.beaten[:, None, None], counts.tied[:, None, None]
    lose = (n - 1) - b - t
    big_g = np.arange(m)[None, :, None]
    big_t = np.arange(k)[None, None, :]
    log_p = (_log_comb(b, big_g) + _log_comb(t, big_t) + _log_comb(lose, (k - 1) - big_g - big_t)
             - _log_comb(np.array(n - 1), np.array(k - 1)))
    hit = np.clip((m - big_g) / (big_t + 1.0), 0.0, 1.0)
    return (np.exp(log_p) * hit).sum(axis=(1, 2))


def kway_accuracy(sim: np.ndarray, k: int) -> dict[str, float]:
    """Exact expected k-way top-1 (and top-5 for k ≥ 50) of a single-fold similarity matrix, in percent."""
    n = sim.shape[0]
    if not 2 <= k <= n:
        raise ValueError(f"{k}-way needs 2 <= k <= {n} gallery items")
    counts = rank_counts(sim, np.zeros(n, dtype=np.int64))
    out = {"top1": float(100.0 * kway_hit_probability(counts, n, k, 1).mean())}
    if k >= 50:
        out["top5"] = float(100.0 * kway_hit_probability(counts, n, k, 5).mean())
    return out


def check_finite(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise EvaluationError(f"{what}: {int(bad.sum())} of {len(bad)} embeddings are not finite (NaN or Inf); "
                              f"the run cannot be scored")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Embedded:
    """A scored evaluation set: embeddings, similarity and metrics (kept for the run's .npz)."""

    eeg: np.ndarray
    gallery: np.ndarray
    similarity: np.ndarray
    metrics: dict


#: batch sizes the per-sample probe cycles through, in a shuffled order: singletons, and sizes that no scoring batch
#: has, so an output that depends on its batch mates (or their number) changes somewhere
PROBE_BATCH_SIZES = (1, 7, 13)


def _chunks(order: np.ndarray, sizes) -> list[np.ndarray]:
    """``order`` cut into consecutive chunks whose sizes cycle through ``sizes``."""
    out, start, i = [], 0, 0
    while start < len(order):
        out.append(order[start:start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return out


def _in_batches(encode_rows, order: np.ndarray, sizes) -> np.ndarray:
    """``encode_rows(rows)`` over ``order`` cut into batches of ``sizes`` (cycled), returned in row order."""
    out = np.concatenate([encode_rows(rows) for rows in _chunks(order, sizes)])
    result = np.empty_like(out)
    result[order] = out
    return result


def _eeg_encoder(method, data: EvalSet, device):
    def encode_rows(rows: np.ndarray) -> np.ndarray:
        eeg = torch.as_tensor(data.eeg[rows], dtype=torch.float32, device=device)
        subject = None if data.subject is None else torch.as_tensor(data.subject[rows], device=device)
        return method.encode_eeg(eeg, subject).float().cpu().numpy()
    return encode_rows


def _table_encoder(encode, table: np.ndarray, device):
    def encode_rows(rows: np.ndarray) -> np.ndarray:
        return encode(torch.as_tensor(table[rows], dtype=torch.float32, device=device)).float().cpu().numpy()
    return encode_rows


class ZeroShotEvaluator:
    def __init__(self, kway="auto", galleries: list[str] | tuple[str, ...] = ("image",), batch_size: int = 1024,
                 seed: int = 0, main_gallery: str = "image", similarity: str = "cosine"):
        unknown = set(galleries) - set(GALLERIES)
        if unknown:
            raise ValueError(f"unknown gallery {sorted(unknown)}; choose from {', '.join(GALLERIES)}")
        if main_gallery not in ("image", "centroid") or similarity not in SIMILARITY:
            raise ValueError(f"main gallery image or centroid and similarity {' or '.join(SIMILARITY)}; got "
                             f"{main_gallery!r}, {similarity!r}")
        self.kway, self.galleries, self.batch_size = kway, list(galleries), int(batch_size)
        self.seed = int(seed)  # orders the per-sample probe only; no score depends on it
        self.main_gallery, self.similarity = main_gallery, similarity

    @classmethod
    def from_config(cls, cfg: dict) -> "ZeroShotEvaluator":
        e = cfg["eval"]
        return cls(kway=e["kway"], galleries=e["galleries"], main_gallery=e.get("main_gallery", "image"),
                   similarity=e.get("similarity", "cosine"))

    @property
    def honest(self) -> bool:
        """Whether the main number is the harness's own: cosine against the test images."""
        return self.main_gallery == "image" and self.similarity == "cosine"

    def main_view(self, data: EvalSet) -> EvalSet:
        """``data`` with its gallery replaced by the main gallery's rows (query i's own concept centre for
        ``centroid``): how test-selected validation is scored exactly as the test is."""
        if self.main_gallery == "image":
            return data
        if data.centroid is None:
            raise EvaluationError("eval.main_gallery=centroid but the test features have no centroid rows")
        return dataclasses.replace(data, gallery=data.centroid[data.concept])

    # --- embedding ----------------------------------------------------------------------------------------------
    @staticmethod
    def _tables(data: EvalSet, names) -> dict[str, tuple[str, np.ndarray]]:
        """The galleries to embed: name → (the method's encoder, table). Extra galleries have a row per concept."""
        tables = {"image": ("encode_image", data.gallery)}
        for name in names:
            if name == "image":
                continue
            table = data.text if name == "text" else data.centroid
            if table is None:
                raise EvaluationError(f"gallery {name!r} requested but the test features have no {name} rows")
            tables[name] = ("encode_text" if name == "text" else "encode_image", table)
        return tables

    @torch.no_grad()
    def embed(self, method, data: EvalSet, device: torch.device | str = "cpu", what: str = "validation",
              galleries=("image",)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(EEG embeddings, {gallery: embeddings}) in eval mode: every gallery first, then the queries."""
        was_training = method.training
        method.eval()
        name_of = type(method).__name__
        try:
            embedded = {}
            for name, (encoder, table) in self._tables(data, galleries).items():
                encode_rows = _table_encoder(getattr(method, encoder), table, device)
                embedded[name] = _in_batches(encode_rows, np.arange(len(table)), (self.batch_size,))
                check_finite(embedded[name], f"{what} {name} gallery embeddings of {name_of}.{encoder}")
            eeg = _in_batches(_eeg_encoder(method, data, device), np.arange(len(data)), (self.batch_size,))
            check_finite(eeg, f"{what} EEG embeddings of {name_of}.encode_eeg")
            return eeg, embedded
        finally:
            method.train(was_training)

    @torch.no_grad()
    def check_per_sample(self, probe, data: EvalSet, eeg: np.ndarray, galleries: dict[str, np.ndarray],
                         device) -> None:
        """Embed again with ``probe`` (an untouched copy of the method): the queries first, in a shuffled order and in
        batches of 1, 7 and 13 (:data:`PROBE_BATCH_SIZES`), then each gallery the same way. Any difference fails."""
        probe.eval()
        rng = np.random.default_rng([self.seed, len(data)])
        tables = self._tables(data, galleries)
        again = {"EEG": _in_batches(_eeg_encoder(probe, data, device), rng.permutation(len(data)), PROBE_BATCH_SIZES)}
        for name, (encoder, table) in tables.items():
            encode_rows = _table_encoder(getattr(probe, encoder), table, device)
            again[name] = _in_batches(encode_rows, rng.permutation(len(table)), PROBE_BATCH_SIZES)
        encoders = {"EEG": "encode_eeg", **{name: encoder for name, (encoder, _) in tables.items()}}
        for name, first in {"EEG": eeg, **galleries}.items():
            diff = np.abs(_unit_rows(first) - _unit_rows(again[name]))
            worst = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan")
            if not np.isfinite(diff).all() or worst > PER_SAMPLE_TOLERANCE:
                raise EvaluationError(
                    f"{type(probe).__name__}.{encoders[name]} is not per-sample: its output depends on the batch "
                    f"({name} embeddings differ by up to {worst:.3g} when the same inputs are embedded in other "
                    f"batches, in another order); a test embedding may depend only on its own input and the trained model")

    # --- scoring ------------------------------------------------------------------------------------------------
    def retrieval(self, eeg_emb: np.ndarray, gallery_emb: np.ndarray, fold: np.ndarray,
                  similarity: str = "cosine") -> dict:
        counts = rank_counts(SIMILARITY[similarity](eeg_emb, gallery_emb), fold)
        return {"top1": counts.topk(1), "top5": counts.topk(5)}

    def validate(self, method, data: EvalSet, device="cpu") -> dict:
        """Validation top-1/top-5 (fold-wise retrieval against the set's gallery, by ``eval.similarity``); raises
        :class:`EvaluationError` on non-finite embeddings (the trainer never selects such an epoch). Test-selected
        validation arrives as :meth:`main_view` of the test, so it is scored as the test is."""
        eeg, galleries = self.embed(method, data, device, what="validation")
        return self.retrieval(eeg, galleries["image"], data.fold, self.similarity)

    def score(self, method, data: EvalSet, device="cpu") -> Embedded:
        """The test metrics: exact n-way top-1/top-5 against the main gallery, chance levels, exact k-way, and the
        labelled extra galleries (cosine)."""
        if len(np.unique(data.fold)) != 1:
            raise ValueError("the test set is one retrieval problem; got several folds")
        probe = copy.deepcopy(method)  # taken before the method sees any test input, so no state carries over
        names = list(dict.fromkeys([*self.galleries, self.main_gallery]))
        eeg, galleries = self.embed(method, data, device, what="test", galleries=names)
        self.check_per_sample(probe, data, eeg, galleries, device)
        del probe
        main = galleries["image"] if self.main_gallery == "image" else galleries[self.main_gallery][data.concept]
        sim = SIMILARITY[self.similarity](eeg, main)
        counts = rank_counts(sim, data.fold)
        n = len(data)
        metrics: dict = {"top1": counts.topk(1), "top5": counts.topk(5), "n_test": n,
                         "chance_top1": 100.0 / n, "chance_top5": 100.0 * min(5, n) / n,
                         "mean_rank": counts.mean_rank(),
                         "kway": {str(k): kway_accuracy(sim, k) for k in kway_values(self.kway, n)}}
        # every listed gallery by cosine, except the pair the headline already is (image by cosine, when honest)
        extra = {name: self.retrieval(eeg, galleries[name][data.concept] if name != "image" else galleries[name],
                                      data.fold)
                 for name in self.galleries if not (name == "image" and self.honest)}
        if extra:
            metrics["galleries"] = extra
        metrics.update(main_gallery=self.main_gallery, similarity=self.similarity)
        return Embedded(eeg=eeg, gallery=main, similarity=sim.astype(np.float32), metrics=metrics)
