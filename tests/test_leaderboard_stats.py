"""Paired statistics against scipy on known data and against small examples worked by hand."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.leaderboard.stats import (cohens_dz, holm, paired_comparisons, sign_flip_test, significance_matrix,
                                     stepwise_comparisons, wilcoxon_test)


def scipy_sign_flip(d, alternative):
    # permutation_type='samples' swaps the two members of each pair, i.e. flips the sign of each difference
    return sps.permutation_test((d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                permutation_type="samples", alternative=alternative, n_resamples=np.inf).pvalue


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_matches_scipy_exact_permutation(seed, alternative):
    rng = np.random.default_rng(seed)
    n = [3, 5, 7, 8, 10, 10][seed]
    d = np.round(rng.normal(0.6, 1.0, size=n), 1)  # rounding creates ties in |mean| among the flips
    res = sign_flip_test(d, alternative)
    assert res.exact and res.n_flips == 2 ** n
    assert res.pvalue == pytest.approx(scipy_sign_flip(d, alternative), abs=1e-12)


def test_sign_flip_by_hand():
    # d = 1, 2, 3: the 8 flipped sums are ±1±2±3 = 6, 4, 2, 0, 0, −2, −4, −6; observed 6 is the single largest
    assert sign_flip_test([1, 2, 3], "greater").pvalue == pytest.approx(1 / 8)
    assert sign_flip_test([1, 2, 3]).pvalue == pytest.approx(2 / 8)
    assert sign_flip_test([1, 2, 3], "less").pvalue == pytest.approx(1.0)
    # d = 1, −2, 3: observed sum 2; of the same 8 sums, 6, 4, 2 are ≥ 2 (3 of 8) and all but the two 0s have |sum| ≥ 2
    assert sign_flip_test([1, -2, 3], "greater").pvalue == pytest.approx(3 / 8)
    assert sign_flip_test([1, -2, 3]).pvalue == pytest.approx(6 / 8)
    assert sign_flip_test([0.0, 0.0]).pvalue == pytest.approx(1.0)


def test_sign_flip_above_the_exact_limit_is_a_seeded_monte_carlo():
    d = np.linspace(-0.5, 2.0, 20)
    res = sign_flip_test(d, "greater")
    assert not res.exact and res.n_flips == 100_000
    assert res.pvalue == sign_flip_test(d, "greater").pvalue  # same seed, same answer
    ref = sps.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                               alternative="greater", n_resamples=100_000, rng=1).pvalue
    assert res.pvalue == pytest.approx(ref, abs=0.003)


def test_wilcoxon_uses_the_requested_tail_not_the_sign_of_the_mean():
    # moabb#1176: the mean is positive but the ranks favour negative differences. Halving the two-sided p and
    # taking the tail from the mean's sign reports p = 0.219 for "greater"; the right one-sided p is 54/64.
    d = np.array([20.0, -1, -2, -3, -4, -5])
    assert d.mean() > 0
    two_sided = wilcoxon_test(d)
    assert two_sided == pytest.approx(28 / 64)  # W+ = 6: P(W+ <= 6) = 14/64 under the exact null, doubled
    assert wilcoxon_test(d, "greater") == pytest.approx(54 / 64)  # P(W+ >= 6) = 1 − P(W+ <= 5) = 1 − 10/64
    assert wilcoxon_test(d, "less") == pytest.approx(14 / 64)
    assert wilcoxon_test(d, "greater") == pytest.approx(sps.wilcoxon(d, alternative="greater").pvalue)
    assert two_sided / 2 < 0.5 < wilcoxon_test(d, "greater")
    assert math.isnan(wilcoxon_test([1.0])) and math.isnan(wilcoxon_test([0.0, 0.0, 0.0]))


def test_cohens_dz_by_hand():
    assert cohens_dz([1, 2, 3]) == pytest.approx(2.0)  # mean 2, std (ddof=1) 1
    assert cohens_dz([-1, 1]) == 0.0
    assert math.isnan(cohens_dz([1.0])) and math.isnan(cohens_dz([0.0, 0.0]))
    assert cohens_dz([2.0, 2.0]) == math.inf


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([np.nan, 0.01, 0.04])
    assert math.isnan(out[0]) and list(out[1:]) == pytest.approx([0.02, 0.04])  # NaN is not a hypothesis
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert len(holm([])) == 0


def per_subject_frame(scores: dict) -> pd.DataFrame:
    rows = [{"method": m, "subject": s, "n_seeds": 1, "top1_mean": v} for m, vals in scores.items()
            for s, v in vals.items()]
    return pd.DataFrame(rows)


def test_pairs_use_only_common_subjects_and_holm_over_pairs():
    scores = {"a": {1: 30.0, 2: 31.0, 3: 33.0, 4: 29.0, 5: 35.0},
              "b": {1: 20.0, 2: 22.0, 3: 21.0, 4: 20.5, 5: 25.0},
              "c": {1: 10.0, 2: 11.0, 3: 12.0}}  # c lacks subjects 4 and 5
    pairs = paired_comparisons(per_subject_frame(scores), ["a", "b", "c"]).set_index(["method_a", "method_b"])
    ab, ac = pairs.loc[("a", "b")], pairs.loc[("a", "c")]
    assert ab.n == 5 and ac.n == 3
    assert ac.mean_diff == pytest.approx(np.mean([20.0, 20.0, 21.0]))
    assert ab.p_perm == pytest.approx(2 / 32) and ac.p_perm == pytest.approx(2 / 8)
    assert ab.p_wilcoxon == pytest.approx(sps.wilcoxon([10, 9, 12, 8.5, 10]).pvalue)
    assert ab.p_perm_greater == pytest.approx(1 / 32)
    assert list(pairs.p_holm) == pytest.approx(holm(list(pairs.p_perm)))
    diff, p = significance_matrix(pairs.reset_index(), ["a", "b", "c"])
    assert diff.loc["b", "a"] == pytest.approx(-ab.mean_diff) and p.loc["c", "a"] == p.loc["a", "c"]
    assert math.isnan(diff.loc["a", "a"])


def test_a_pair_with_one_common_subject_is_not_a_hypothesis():
    scores = {"a": {1: 30.0, 2: 31.0, 3: 32.0}, "b": {1: 20.0, 2: 20.5, 3: 21.0}, "c": {1: 10.0}}
    pairs = paired_comparisons(per_subject_frame(scores), ["a", "b", "c"])
    lonely = pairs[pairs.method_b == "c"]
    assert lonely.p_holm.isna().all()
    assert pairs.loc[0, "p_holm"] == pytest.approx(pairs.loc[0, "p_perm"])  # m = 1: no correction


def test_stepwise_comparisons_against_previous_row():
    scores = {"base": {1: 10.0, 2: 11.0, 3: 12.0, 4: 9.0},
              "+x": {1: 12.0, 2: 12.5, 3: 14.0, 4: 10.0},
              "full": {1: 11.0, 2: 13.5, 3: 13.0, 4: 11.0}}
    steps = stepwise_comparisons(per_subject_frame(scores), ["base", "+x", "full"])
    assert math.isnan(steps.p_step[0])
    assert steps.p_step[1] == pytest.approx(scipy_sign_flip(np.array([2.0, 1.5, 2.0, 1.0]), "two-sided"))
    assert steps.p_step[2] == pytest.approx(scipy_sign_flip(np.array([-1.0, 1.0, -1.0, 1.0]), "two-sided"))
    assert list(steps.p_step_holm[1:]) == pytest.approx(holm(list(steps.p_step[1:])))
