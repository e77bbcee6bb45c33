"""Paired comparisons of methods across subjects: sign-flip permutation, Wilcoxon, Cohen's d_z, Holm.

Subjects are the paired samples: each method contributes one number per subject (its mean over seeds), and only
subjects that both methods completed are compared. With THINGS-EEG's 10 subjects the permutation test is exact
(2^10 = 1024 sign flips). One-sided p-values come from the test itself (``alternative=``), never from halving a
two-sided p-value and guessing the tail from the sign of the mean, which MOABB got wrong (moabb#1176).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Up to this many pairs, the sign-flip test enumerates all 2^n flips; above it, it draws MC_FLIPS random ones.
EXACT_MAX_N = 16
MC_FLIPS = 100_000
ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class SignFlipResult:
    statistic: float  # mean of the differences
    pvalue: float
    exact: bool
    n_flips: int


def sign_flip_test(diff: Sequence[float], alternative: str = "two-sided", seed: int = 0) -> SignFlipResult:
    """Paired permutation test of mean(diff) = 0 by flipping the sign of each difference.

    ``greater`` tests mean(diff) > 0. The two-sided p-value counts flips with |mean| at least the observed |mean|,
    which equals scipy's doubled smaller tail because the sign-flip null is symmetric.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative {alternative!r}, expected one of {ALTERNATIVES}")
    d = np.asarray(diff, dtype=float)
    n = d.size
    if n == 0:
        return SignFlipResult(math.nan, math.nan, True, 0)
    observed = d.mean()
    if n <= EXACT_MAX_N:
        # Row i of `signs` is the binary expansion of i mapped to ±1: every flip exactly once.
        signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        exact = True
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(MC_FLIPS, n))
        exact = False
    null = signs @ d / n
    # Flips that reproduce the observed mean can differ from it by rounding; count them as ties, as scipy does.
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        hits = np.count_nonzero(null >= observed - tol)
    elif alternative == "less":
        hits = np.count_nonzero(null <= observed + tol)
    else:
        hits = np.count_nonzero(np.abs(null) >= abs(observed) - tol)
    m = null.size
    # A random subset of flips gets the (hits + 1) / (m + 1) estimate, which never reports an impossible p = 0.
    p = hits / m if exact else (hits + 1) / (m + 1)
    return SignFlipResult(float(observed), float(min(p, 1.0)), exact, int(m))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean: mean ± t(1 − (1 − level)/2, n − 1) · std(ddof=1) / √n.

    (NaN, NaN) below two values, where no spread can be estimated.
    """
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()) - half, float(v.mean()) + half


def wilcoxon_test(diff: Sequence[float], alternative: str = "two-sided") -> float:
    """scipy's Wilcoxon signed-rank p-value with the requested tail; NaN when it is undefined (n < 2, all zero)."""
    d = np.asarray(diff, dtype=float)
    if d.size < 2 or not np.any(d != 0):
        return math.nan
    return float(sps.wilcoxon(d, alternative=alternative).pvalue)


def cohens_dz(diff: Sequence[float]) -> float:
    """Standardised mean of paired differences, mean / std (ddof=1); NaN when undefined."""
    d = np.asarray(diff, dtype=float)
    if d.size < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return math.nan if d.mean() == 0 else math.copysign(math.inf, d.mean())
    return float(d.mean() / sd)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order; NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))  # adjusted p-values never decrease down the ranking
        out[i] = running
    return out


def paired_comparisons(per_subject: pd.DataFrame, methods: Sequence[str], metric: str = "top1",
                       alpha: float = 0.05) -> pd.DataFrame:
    """Every pair (a, b) of ``methods`` in order, over the subjects both completed; differences are a − b.

    ``per_subject`` has one row per (method, subject) of a single protocol with ``{metric}_mean`` and ``n_seeds``.
    Holm's correction runs over all pairs of this call, separately for each test.
    """
    values = {m: _subject_values(per_subject, m, metric) for m in methods}
    rows = []
    for a, b in itertools.combinations(methods, 2):
        common = sorted(set(values[a].index) & set(values[b].index))
        d = (values[a].loc[common] - values[b].loc[common]).to_numpy()
        perm = {alt: sign_flip_test(d, alt) for alt in ALTERNATIVES}
        rows.append({
            "method_a": a, "method_b": b, "n": len(common),
            "mean_a": float(values[a].loc[common].mean()) if common else math.nan,
            "mean_b": float(values[b].loc[common].mean()) if common else math.nan,
            "mean_diff": perm["two-sided"].statistic, "d_z": cohens_dz(d),
            "p_perm": perm["two-sided"].pvalue, "p_perm_greater": perm["greater"].pvalue,
            "p_perm_less": perm["less"].pvalue, "exact": perm["two-sided"].exact,
            "p_wilcoxon": wilcoxon_test(d), "p_wilcoxon_greater": wilcoxon_test(d, "greater"),
            "p_wilcoxon_less": wilcoxon_test(d, "less"),
        })
    cols = ["method_a", "method_b", "n", "mean_a", "mean_b", "mean_diff", "d_z", "p_perm", "p_perm_greater",
            "p_perm_less", "exact", "p_wilcoxon", "p_wilcoxon_greater", "p_wilcoxon_less"]
    out = pd.DataFrame(rows, columns=cols)
    # Fewer than two common subjects is no comparison: its p-value must not shrink the others' Holm factor.
    usable = out.n >= 2
    out["p_holm"] = holm(out.p_perm.where(usable))
    out["p_wilcoxon_holm"] = holm(out.p_wilcoxon.where(usable))
    out["significant"] = out.p_holm < alpha
    return out


def significance_matrix(pairs: pd.DataFrame, methods: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Square frames (row method vs column method): mean difference row − column, and its Holm-adjusted p-value."""
    diff = pd.DataFrame(np.nan, index=list(methods), columns=list(methods))
    p = diff.copy()
    for _, r in pairs.iterrows():
        diff.loc[r.method_a, r.method_b], diff.loc[r.method_b, r.method_a] = r.mean_diff, -r.mean_diff
        p.loc[r.method_a, r.method_b] = p.loc[r.method_b, r.method_a] = r.p_holm
    return diff, p


def _subject_values(per_subject: pd.DataFrame, method: str, metric: str) -> pd.Series:
    part = per_subject[(per_subject.method == method) & (per_subject.n_seeds > 0)]
    return part.set_index("subject")[f"{metric}_mean"].dropna()


def stepwise_comparisons(per_subject: pd.DataFrame, methods: Sequence[str], metric: str = "top1") -> pd.DataFrame:
    """Each method against the one before it (an ablation's added component), two-sided sign-flip, Holm over steps.

    The first method has no predecessor and gets NaN.
    """
    values = {m: _subject_values(per_subject, m, metric) for m in methods}
    rows = [{"method": methods[0], "n": 0, "p_step": math.nan}] if methods else []
    for prev, cur in zip(methods, methods[1:]):
        common = sorted(set(values[prev].index) & set(values[cur].index))
        d = (values[cur].loc[common] - values[prev].loc[common]).to_numpy()
        rows.append({"method": cur, "n": len(common), "p_step": sign_flip_test(d).pvalue if len(common) >= 2
                     else math.nan})
    out = pd.DataFrame(rows, columns=["method", "n", "p_step"])
    out["p_step_holm"] = holm(out.p_step)
    return out
