"""ZeroShotEvaluator against hand-computed similarity matrices, brute-force k-way enumeration and adversarial methods."""
import itertools
import math

import numpy as np
import pytest
import torch

from bench.config_rules import kway_values
from bench.evaluate import EvaluationError, ZeroShotEvaluator, cosine_similarity, kway_accuracy, rank_counts
from bench.method import DataInfo, Method
from bench.protocols import EvalSet


def test_topk_on_a_hand_computed_matrix():
    sim = np.array([[0.9, 0.1, 0.2],    # query 0: own target best -> rank 0
                    [0.8, 0.5, 0.7],    # query 1: two rows beat it -> rank 2
                    [0.1, 0.6, 0.3]])   # query 2: one row beats it -> rank 1
    counts = rank_counts(sim, np.zeros(3, dtype=int))
    assert counts.beaten.tolist() == [0, 2, 1] and counts.tied.tolist() == [0, 0, 0]
    assert counts.topk(1) == pytest.approx(100 / 3)
    assert counts.topk(2) == pytest.approx(200 / 3)
    # folds: query 1 only competes with row 0 of fold 0
    assert rank_counts(sim, np.array([0, 0, 1])).beaten.tolist() == [0, 1, 0]


def test_ties_count_by_expectation():
    sim = np.array([[0.5, 0.5, 0.5, 0.1],   # ties with two rows: top-1 1/3, top-2 2/3, top-3 1
                    [0.9, 0.2, 0.2, 0.0],   # beaten by one, tied with one: top-1 0, top-2 1/2, top-3 1
                    [0.0, 0.0, 0.0, 0.0],   # all tied: top-k = k/4
                    [0.0, 0.0, 0.0, 1.0]])
    counts = rank_counts(sim, np.zeros(4, dtype=int))
    np.testing.assert_allclose(counts.hit_probability(1), [1 / 3, 0, 1 / 4, 1])
    np.testing.assert_allclose(counts.hit_probability(2), [2 / 3, 1 / 2, 2 / 4, 1])
    np.testing.assert_allclose(counts.hit_probability(3), [1, 1, 3 / 4, 1])
    assert counts.mean_rank() == pytest.approx(np.mean([2, 2.5, 2.5, 1]))


def _brute_force_kway(sim: np.ndarray, k: int, m: int) -> float:
    """Every draw of k-1 distractors and every order of the tied rows, enumerated."""
    n, total = sim.shape[0], 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        draws = list(itertools.combinations(others, k - 1))
        for draw in draws:
            beaten = sum(sim[i, j] > sim[i, i] for j in draw)
            tied = sum(sim[i, j] == sim[i, i] for j in draw)
            # the target is equally likely to sit at any of the tied+1 positions after the beaten rows
            total += sum(beaten + pos < m for pos in range(tied + 1)) / (tied + 1) / len(draws)
    return 100.0 * total / n


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_exact_kway_matches_brute_force_enumeration(k):
    rng = np.random.default_rng(k)
    sim = rng.integers(0, 4, size=(8, 8)).astype(float)  # few values: many ties
    assert kway_accuracy(sim, k)["top1"] == pytest.approx(_brute_force_kway(sim, k, 1))
    from bench.evaluate import kway_hit_probability

    counts = rank_counts(sim, np.zeros(8, dtype=int))
    for m in (2, 5):
        assert 100 * kway_hit_probability(counts, 8, k, m).mean() == pytest.approx(_brute_force_kway(sim, k, m))


def test_exact_kway_edges_and_values():
    rng = np.random.default_rng(0)
    perfect = rng.random((60, 60))
    np.fill_diagonal(perfect, 2.0)
    assert kway_accuracy(perfect, 2) == {"top1": 100.0}
    assert kway_accuracy(perfect, 50) == {"top1": 100.0, "top5": 100.0}
    assert kway_accuracy(np.zeros((60, 60)), 50)["top1"] == pytest.approx(100 / 50)  # constant: exactly chance
    assert kway_accuracy(np.zeros((60, 60)), 50)["top5"] == pytest.approx(100 * 5 / 50)
    # k = n: the only draw is every other row, so k-way equals n-way
    sim = rng.normal(size=(30, 30))
    assert kway_accuracy(sim, 30)["top1"] == pytest.approx(rank_counts(sim, np.zeros(30, dtype=int)).topk(1))
    assert kway_accuracy(sim, 10) == kway_accuracy(sim, 10)  # no draws: no seed, no noise
    with pytest.raises(ValueError, match="2 <= k <= 30"):
        kway_accuracy(sim, 31)
    assert kway_values("auto", 200) == [2, 4, 10, 50, 100] and kway_values("auto", 40) == [2, 4, 10]
    assert kway_values([2, 7], 40) == [2, 7]


def test_cosine_similarity_ignores_scale():
    q = np.array([[2.0, 0.0], [0.0, 3.0]])
    g = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(q, g), [[1, 2 ** -0.5], [0, 2 ** -0.5]])


class Identity(Method):
    defaults = {}

    def encode_eeg(self, eeg, subject):
        return eeg.flatten(1)


def test_score_reports_chance_kway_and_labelled_galleries():
    n, d = 12, 6
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(n, d)).astype(np.float32)
    data = EvalSet(eeg=gallery.reshape(n, 2, 3), gallery=gallery, fold=np.zeros(n, dtype=np.int64), subject=None,
                   concept=np.arange(n), text=gallery[::-1].copy())
    method = Identity(DataInfo(2, 3, 100.0, ("a", "b"), d, 1, 5, True))
    ev = ZeroShotEvaluator(kway=[2, 4], galleries=["image", "text"])
    out = ev.score(method, data)
    m = out.metrics
    assert m["top1"] == 100.0 and m["n_test"] == n and m["chance_top1"] == pytest.approx(100 / 12)
    assert set(m["kway"]) == {"2", "4"} and m["kway"]["2"]["top1"] == 100.0
    assert m["galleries"]["text"]["top1"] < 100.0  # reversed texts: scored separately, never mixed in
    assert out.similarity.shape == (n, n)
    with pytest.raises(EvaluationError, match="centroid"):
        ZeroShotEvaluator(kway=[], galleries=["centroid"]).score(method, data)
    with pytest.raises(ValueError, match="unknown gallery"):
        ZeroShotEvaluator(galleries=["audio"])


class Constant(Identity):
    """Every EEG embedding is the same vector (or all zeros, or NaN)."""

    value = 1.0

    def encode_eeg(self, eeg, subject):
        return torch.full((eeg.shape[0], 6), self.value)


class Hungarian(Identity):
    """Transduction through the Method API: remembers the gallery, then assigns the batch's queries one-to-one."""

    def encode_image(self, features):
        self.seen_gallery = features
        return features

    def encode_eeg(self, eeg, subject):
        from scipy.optimize import linear_sum_assignment

        q = eeg.flatten(1)
        g = getattr(self, "seen_gallery", None)
        if g is None:
            return q
        cost = -(torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T)
        rows, cols = linear_sum_assignment(cost.numpy())
        out = q.clone()
        out[torch.as_tensor(rows)] = g[torch.as_tensor(cols)]
        return out


class RememberingHungarian(Hungarian):
    """Hungarian, and it replays its first answer for every input it has seen: a probe run on the same object after
    the scored pass would see consistent outputs, so the probe must be a copy taken before any test input."""

    def encode_eeg(self, eeg, subject):
        memo = self.__dict__.setdefault("memo", {})
        if all(row.numpy().tobytes() in memo for row in eeg):
            return torch.stack([memo[row.numpy().tobytes()] for row in eeg])
        out = super().encode_eeg(eeg, subject)
        memo.update({row.numpy().tobytes(): o for row, o in zip(eeg, out)})
        return out


class BatchCentred(Identity):
    """Subtracts the batch mean: a per-batch statistic, i.e. test-time adaptation across queries."""

    def encode_eeg(self, eeg, subject):
        q = eeg.flatten(1)
        return q - q.mean(dim=0, keepdim=True)


def _noisy_problem(n=40, d=6, noise=0.5, bias=1.0, seed=0):
    """Queries = targets + noise + one shared offset (the offset makes hubs, which transduction exploits)."""
    rng = np.random.default_rng(seed)
    gallery = rng.normal(size=(n, d)).astype(np.float32)
    eeg = gallery + noise * rng.normal(size=(n, d)) + bias * rng.normal(size=(1, d))
    eeg = eeg.astype(np.float32).reshape(n, 2, 3)
    return EvalSet(eeg=eeg, gallery=gallery, fold=np.zeros(n, dtype=np.int64), subject=None, concept=np.arange(n))


INFO = DataInfo(2, 3, 100.0, ("a", "b"), 6, 1, 5, True)


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_constant_and_zero_embeddings_score_exactly_chance(value):
    data = _noisy_problem()
    method = Constant(INFO)
    method.value = value
    m = ZeroShotEvaluator(kway=[2, 10]).score(method, data).metrics
    assert m["top1"] == pytest.approx(100 / 40) and m["top5"] == pytest.approx(500 / 40)
    assert m["kway"]["2"]["top1"] == pytest.approx(50.0) and m["kway"]["10"]["top1"] == pytest.approx(10.0)
    assert m["mean_rank"] == pytest.approx(20.5)


def test_nan_embeddings_fail_naming_the_partition():
    method = Constant(INFO)
    method.value = float("nan")
    with pytest.raises(EvaluationError, match="test EEG embeddings of Constant.encode_eeg: 40 of 40"):
        ZeroShotEvaluator(kway=[]).score(method, _noisy_problem())
    with pytest.raises(EvaluationError, match="validation EEG"):
        ZeroShotEvaluator(kway=[]).validate(method, _noisy_problem())

    class NanGallery(Identity):
        def encode_image(self, features):
            return features * float("inf")

    with pytest.raises(EvaluationError, match="image gallery embeddings of NanGallery.encode_image"):
        ZeroShotEvaluator(kway=[]).score(NanGallery(INFO), _noisy_problem())


def test_gallery_is_embedded_before_the_queries():
    calls = []

    class Spy(Identity):
        def encode_image(self, features):
            calls.append("gallery")
            return features

        def encode_eeg(self, eeg, subject):
            calls.append("eeg")
            return eeg.flatten(1)

    ZeroShotEvaluator(kway=[]).embed(Spy(INFO), _noisy_problem(), what="test")
    assert calls == ["gallery", "eeg"]


@pytest.mark.parametrize("cls", [Hungarian, RememberingHungarian, BatchCentred])
def test_transductive_methods_fail_the_per_sample_check(cls):
    data = _noisy_problem()
    honest = ZeroShotEvaluator(kway=[]).score(Identity(INFO), data).metrics["top1"]
    # the adversary does gain when unchecked (Hungarian): that is what the check must stop
    if cls is Hungarian:
        eeg, gal = ZeroShotEvaluator(kway=[]).embed(cls(INFO), data, what="test")
        cheat = ZeroShotEvaluator().retrieval(eeg, gal["image"], data.fold)["top1"]
        assert cheat > honest + 30, (cheat, honest)
    with pytest.raises(EvaluationError, match=f"{cls.__name__}.encode_eeg is not per-sample"):
        ZeroShotEvaluator(kway=[]).score(cls(INFO), data)


def test_a_per_sample_method_passes_with_batches_of_any_size():
    data = _noisy_problem(n=50)
    method = Identity(INFO)
    a = ZeroShotEvaluator(kway=[], batch_size=3).score(method, data).metrics
    b = ZeroShotEvaluator(kway=[], batch_size=1024).score(method, data).metrics
    assert a == b
