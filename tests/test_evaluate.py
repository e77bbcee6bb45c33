"""ZeroShotEvaluator against hand-computed similarity matrices; the k-way sampler's determinism."""
import numpy as np
import pytest
import torch

from bench.evaluate import (ZeroShotEvaluator, cosine_similarity, kway_accuracy, ranks_within_folds, topk_accuracy)
from bench.method import DataInfo, Method
from bench.protocols import EvalSet


def test_topk_on_a_hand_computed_matrix():
    sim = np.array([[0.9, 0.1, 0.2],    # query 0: own target best -> rank 0
                    [0.8, 0.5, 0.7],    # query 1: two rows beat it -> rank 2
                    [0.1, 0.6, 0.3]])   # query 2: one row beats it -> rank 1
    ranks = ranks_within_folds(sim, np.zeros(3, dtype=int))
    assert ranks.tolist() == [0, 2, 1]
    assert topk_accuracy(ranks, 1) == pytest.approx(100 / 3)
    assert topk_accuracy(ranks, 2) == pytest.approx(200 / 3)
    # folds: query 1 only competes with row 0 of fold 0
    assert ranks_within_folds(sim, np.array([0, 0, 1])).tolist() == [0, 1, 0]


def test_cosine_similarity_ignores_scale():
    q = np.array([[2.0, 0.0], [0.0, 3.0]])
    g = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(q, g), [[1, 2 ** -0.5], [0, 2 ** -0.5]])


def test_kway_sampler_is_deterministic_and_correct():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(30, 30))
    a = kway_accuracy(sim, 10, repeats=20, seed=0)
    assert a == kway_accuracy(sim, 10, repeats=20, seed=0)
    assert a != kway_accuracy(sim, 10, repeats=20, seed=1)
    perfect = np.eye(30) + 0.01 * rng.random((30, 30))
    np.fill_diagonal(perfect, 2.0)
    assert kway_accuracy(perfect, 2, 5, 0) == {"top1": 100.0}
    assert set(kway_accuracy(sim, 20, 5, 0)) == {"top1"} and set(kway_accuracy(np.eye(60), 50, 2, 0)) == {"top1", "top5"}
    # 2-way on random similarities is near chance
    big = rng.normal(size=(200, 200))
    assert 40 < kway_accuracy(big, 2, 50, 0)["top1"] < 60
    with pytest.raises(ValueError, match="at least"):
        kway_accuracy(sim, 31, 1, 0)


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
    ev = ZeroShotEvaluator(kway=[2, 4, 50], kway_repeats=3, galleries=["image", "text"])
    out = ev.score(method, data)
    m = out.metrics
    assert m["top1"] == 100.0 and m["n_test"] == n and m["chance_top1"] == pytest.approx(100 / 12)
    assert set(m["kway"]) == {"2", "4"}  # 50-way needs 50 items: skipped, not faked
    assert m["galleries"]["text"]["top1"] < 100.0  # reversed texts: scored separately, never mixed in
    assert out.similarity.shape == (n, n)
    with pytest.raises(ValueError, match="centroid"):
        ZeroShotEvaluator(kway=[], galleries=["centroid"]).score(method, data)
    with pytest.raises(ValueError, match="unknown gallery"):
        ZeroShotEvaluator(galleries=["audio"])
