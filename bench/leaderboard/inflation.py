"""Protocol inflation: each method's as-published number beside its honest one, on the same runs' data.

The published protocols score a method the way its paper did (its gallery, its similarity and, for some papers, an
epoch chosen on the test set): ``published`` within subject, ``published-inter`` leaving one subject out. Their runs
never enter the leaderboard's tables. Here each is paired with the honest run (``intra`` resp. ``inter``) of the same
method, subject, seed and data fingerprint, so that a difference measures the protocol and nothing else (not other
data, not another seed's luck). As everywhere on the leaderboard, seeds are averaged within a subject first and
subjects are the samples of the confidence interval.
"""
from __future__ import annotations

import math

import pandas as pd

from bench.records import COMPLETED, FAILED

from . import aggregate as agg
from . import stats

#: published protocol → the honest protocol its runs are paired with
PUBLISHED = {"published": "intra", "published-inter": "inter"}
CI_LEVEL = 0.95
#: What makes a published run and an honest run the same run but for the protocol.
PAIR_KEY = ["name", "subject", "seed", "data_fingerprint"]
COLUMNS = ["method", "honest_entry", "protocol", "published_protocol", "paired", "n_pairs", "n_subjects",
           "honest_top1", "published_top1", "delta_top1", "ci_low", "ci_high", "test_selected", "n_test_selected",
           "settings", "synthetic", "flag"]


def split_published(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(honest runs, published-protocol runs): the second never reach a leaderboard table, grid or plot."""
    published = runs.protocol.isin(list(PUBLISHED))
    return runs[~published], runs[published]


def protocol_family(protocol: str) -> set[str]:
    """A protocol with its published counterpart (intra with published, inter with published-inter), so that a
    ``--protocol`` filter keeps both sides of every pair."""
    honest = PUBLISHED.get(protocol, protocol)
    return {honest, *(p for p, h in PUBLISHED.items() if h == honest)}


def inflation_table(honest: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per (published entry, honest entry) with paired runs; then, per published entry, one ``unpaired`` row
    for its completed runs that no honest run matches and its failed runs: listed, never silently dropped."""
    rows = []
    partners = honest[honest.status == COMPLETED]
    for (entry, protocol), part in published.groupby(["method", "protocol"], sort=True):
        done = part[part.status == COMPLETED]
        merged = done.merge(partners[partners.protocol == PUBLISHED[protocol]], on=PAIR_KEY,
                            suffixes=("_pub", "_hon"))
        for honest_entry, pairs in merged.groupby("method_hon", sort=True):
            rows.append(_paired_row(entry, honest_entry, protocol, pairs))
        rest = done[~done.spec_hash.isin(set(merged.spec_hash_pub))]
        failed = part[part.status == FAILED]
        if len(rest) or len(failed):
            rows.append(_unpaired_row(entry, protocol, rest, failed))
    out = pd.DataFrame(rows, columns=COLUMNS)
    if out.empty:
        return out
    order = sorted(range(len(out)), key=lambda i: (agg.protocol_rank(out.protocol[i]), out.method[i],
                                                   not out.paired[i], out.honest_entry[i] or ""))
    return out.iloc[order].reset_index(drop=True)


def _paired_row(entry: str, honest_entry: str, protocol: str, pairs: pd.DataFrame) -> dict:
    per_subject = pairs.groupby("subject").agg(honest=("top1_hon", "mean"), published=("top1_pub", "mean"))
    diff = per_subject.published - per_subject.honest
    low, high = stats.mean_ci(diff.to_numpy(), CI_LEVEL)
    n_selected = int(pairs.test_selected_pub.sum())
    partial = 0 < n_selected < len(pairs)
    return {"method": entry, "honest_entry": honest_entry, "protocol": PUBLISHED[protocol],
            "published_protocol": protocol, "paired": True, "n_pairs": len(pairs), "n_subjects": len(per_subject),
            "honest_top1": float(per_subject.honest.mean()), "published_top1": float(per_subject.published.mean()),
            "delta_top1": float(diff.mean()), "ci_low": low, "ci_high": high, "test_selected": n_selected > 0,
            "n_test_selected": n_selected,
            "settings": _settings(pairs.main_gallery_pub, pairs.similarity_pub),
            "synthetic": bool(pairs.synthetic_pub.any() or pairs.synthetic_hon.any()),
            "flag": f"test-selected in {n_selected} of {len(pairs)} runs" if partial else ""}


def _unpaired_row(entry: str, protocol: str, rest: pd.DataFrame, failed: pd.DataFrame) -> dict:
    parts = []  # every seed named (no "all seeds": there is no expected grid here to be all of)
    if len(rest):
        parts.append("unpaired (no honest run of the same method, subject, seed and data): "
                     + agg.describe_cells(list(zip(rest.subject, rest.seed)), ()))
    if len(failed):
        parts.append("failed: " + agg.describe_cells(list(zip(failed.subject, failed.seed)), ()))
    per_subject = rest.groupby("subject").top1.mean()
    n_selected = int(rest.test_selected.sum())
    return {"method": entry, "honest_entry": None, "protocol": PUBLISHED[protocol], "published_protocol": protocol,
            "paired": False, "n_pairs": 0, "n_subjects": len(per_subject), "honest_top1": math.nan,
            "published_top1": float(per_subject.mean()) if len(per_subject) else math.nan,
            "delta_top1": math.nan, "ci_low": math.nan, "ci_high": math.nan, "test_selected": n_selected > 0,
            "n_test_selected": n_selected, "settings": _settings(rest.main_gallery, rest.similarity),
            "synthetic": bool(rest.synthetic.any() or failed.synthetic.any()), "flag": "; ".join(parts)}


def _settings(galleries: pd.Series, similarities: pd.Series) -> str | None:
    """How the published runs scored, e.g. "centroid gallery, dot" (several: each, by name)."""
    found = sorted({f"{g or '?'} gallery, {s or '?'}" for g, s in zip(galleries, similarities) if g or s})
    return "; ".join(found) or None
