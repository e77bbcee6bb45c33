"""The leaderboard's data: run records (and reported rows) → a `Leaderboard` whose tables are computed on demand.

`build_leaderboard` is the one place where records become numbers; every renderer only formats what it holds.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd

from bench.records import RunRecord

from . import aggregate as agg
from . import inflation as infl
from . import stats
from .errors import LeaderboardError

METRICS = ("top1", "top5")


@dataclass
class Leaderboard:
    """Everything the renderers need, computed lazily from the (filtered) runs and reported rows.

    ``runs`` are the honest protocols' runs only; published-protocol runs live in ``inflation`` alone. ``reported``
    holds only the literature rows that may stand beside these runs (`aggregate.comparable_reported`).
    """

    runs: pd.DataFrame
    curves: pd.DataFrame
    grids: dict[str, agg.Grid]
    reported: pd.DataFrame | None
    metric: str = "top1"
    alpha: float = 0.05
    reference: str | None = None
    shown_variants: frozenset = frozenset()
    inflation: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=infl.COLUMNS))
    n_published_runs: int = 0
    n_reported_hidden: int = 0  # literature rows left out: no comparable run beside them
    _pairs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def protocols(self) -> list[str]:
        found = set(self.runs.protocol)
        if self.reported is not None:
            found |= set(self.reported.protocol)
        return sorted(found, key=agg.protocol_rank)

    @functools.cached_property
    def entry_runs(self) -> pd.DataFrame:
        """Runs of the leaderboard's entries: full methods, and ablation variants only when asked for by name.

        Variants live in the ablation table; in the main table and the statistics they would multiply the pairs
        (and so Holm's factor) with comparisons nobody asked for.
        """
        keep = self.runs.variant.isna() | self.runs.method.isin(self.shown_variants)
        return self.runs[keep]

    @functools.cached_property
    def per_subject(self) -> pd.DataFrame:
        return agg.subject_means(self.entry_runs)

    @functools.cached_property
    def summary(self) -> pd.DataFrame:
        return agg.summary_table(self.entry_runs, self.grids)

    @functools.cached_property
    def reported_long(self) -> pd.DataFrame | None:
        return None if self.reported is None else agg.reported_rows(self.reported)

    @functools.cached_property
    def long(self) -> pd.DataFrame:
        return agg.long_table(self.entry_runs, self.grids, self.reported)

    @functools.cached_property
    def kway(self) -> pd.DataFrame:
        return _in_summary_order(agg.kway_table(self.entry_runs), self.summary)

    @functools.cached_property
    def ablation(self) -> pd.DataFrame:
        """The ablation rows, each with a paired test against the row above it (Holm over one method's steps)."""
        table = agg.ablation_table(self.runs, self.grids)
        per_subject = agg.subject_means(self.runs)
        parts = []
        for (protocol, _), part in table.groupby(["protocol", "method"], sort=False):
            steps = stats.stepwise_comparisons(per_subject[per_subject.protocol == protocol], list(part.entry),
                                               self.metric)
            parts.append(part.assign(p_step=steps.p_step.to_numpy(), p_step_holm=steps.p_step_holm.to_numpy()))
        if not parts:
            return table.assign(p_step=pd.Series(dtype=float), p_step_holm=pd.Series(dtype=float))
        return pd.concat(parts, ignore_index=True)

    @functools.cached_property
    def timings(self) -> pd.DataFrame:
        """Timings of every run, variants included: what a method costs matters for its ablations too."""
        return _in_summary_order(agg.timings_table(self.runs), self.summary)

    def methods(self, protocol: str) -> list[str]:
        """Reproduced methods of a protocol with at least one completed subject, best first."""
        s = self.summary[(self.summary.protocol == protocol) & (self.summary.n_subjects > 0)]
        return list(s.method)

    def pairs(self, protocol: str) -> pd.DataFrame:
        if protocol not in self._pairs:
            ps = self.per_subject[self.per_subject.protocol == protocol]
            self._pairs[protocol] = stats.paired_comparisons(ps, self.methods(protocol), self.metric, self.alpha)
        return self._pairs[protocol]

    def all_pairs(self) -> pd.DataFrame:
        frames = [self.pairs(p).assign(protocol=p, metric=self.metric) for p in self.protocols]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=["protocol", "metric"])
        out = pd.concat(frames, ignore_index=True)
        return out[["protocol", "metric", *[c for c in out.columns if c not in ("protocol", "metric")]]]

    def reference_for(self, protocol: str) -> str | None:
        methods = self.methods(protocol)
        if self.reference is None:
            return methods[0] if methods else None
        if self.reference not in methods:
            raise LeaderboardError(f"reference method {self.reference!r} has no completed runs in protocol "
                                   f"{protocol!r}; choose one of {', '.join(methods) or '(none)'}")
        return self.reference


def _in_summary_order(frame: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Leaderboard entries in their ranking order, anything else (variants) after them by name."""
    rank = {(m, p): i for i, (m, p) in enumerate(zip(summary.method, summary.protocol))}
    key = [(p, rank.get((m, p), len(rank)), m) for m, p in zip(frame.method, frame.protocol)]
    order = sorted(range(len(frame)), key=lambda i: (agg.protocol_rank(key[i][0]), *key[i][1:]))
    return frame.iloc[order].reset_index(drop=True)


def build_leaderboard(records: Iterable[RunRecord], reported: pd.DataFrame | None = None, *,
                      protocol: str | None = None, methods: Sequence[str] | None = None,
                      expect_subjects: Sequence[int] | None = None, expect_seeds: Sequence[int] | None = None,
                      metric: str = "top1", alpha: float = 0.05, reference: str | None = None) -> Leaderboard:
    """Aggregate run records (and reported rows from `load_reported`) into a Leaderboard.

    The expected subjects × seeds of a protocol come from all of its runs, before ``methods`` narrows the view, so a
    method missing a subject that others ran is flagged even when shown alone. Published-protocol runs go to the
    inflation table only; ``protocol`` naming one of them shows that table alone.
    """
    if metric not in METRICS:
        raise LeaderboardError(f"metric {metric!r}, expected one of {', '.join(METRICS)}")
    records = list(records)
    runs = agg.runs_frame(records)
    grids = agg.expected_grids(infl.split_published(runs)[0], expect_subjects, expect_seeds)
    runs, reported, shown_variants = _narrow(runs, reported, protocol, methods)
    runs, published = infl.split_published(runs)
    inflation = infl.inflation_table(runs, published)
    if protocol in infl.PUBLISHED:
        runs = runs.iloc[0:0]  # its honest partners were needed for the pairs, not for a table of their own
    shown = agg.comparable_reported(reported, runs)
    hidden = (0 if reported is None else len(reported)) - (0 if shown is None else len(shown))
    if runs.empty and published.empty:
        where = f" for protocol {protocol!r}" if protocol else ""
        why = " (literature rows are shown only beside runs on real THINGS-EEG)" if hidden else ""
        raise LeaderboardError(f"nothing to show{where}: no run records match{why}")
    if reference is not None and reference not in set(runs.method):
        raise LeaderboardError(f"reference method {reference!r} has no runs; known: "
                               f"{', '.join(sorted(set(runs.method))) or '(none)'}")
    curves = agg.validation_curves(records, runs)
    return Leaderboard(runs.reset_index(drop=True), curves, grids, shown, metric, alpha, reference, shown_variants,
                       inflation, len(published), hidden)


def _narrow(runs: pd.DataFrame, reported: pd.DataFrame | None, protocol: str | None,
            methods: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame | None, frozenset]:
    """The runs and reported rows ``protocol`` and ``methods`` ask for, and the variants asked for by name."""
    if protocol is not None:
        runs = runs[runs.protocol.isin(infl.protocol_family(protocol))]
        reported = None if reported is None else reported[reported.protocol == protocol]
    shown_variants: frozenset = frozenset()
    if methods:
        runs, reported = _select_methods(runs, reported, methods)
        wanted = {m.strip().lower() for m in methods}
        shown_variants = frozenset(runs.method[runs.variant.notna() & runs.name.str.lower().isin(wanted)])
    return runs, reported, shown_variants


def _select_methods(runs: pd.DataFrame, reported: pd.DataFrame | None, methods: Sequence[str]):
    """Keep runs whose entry, display or base name is asked for (so ``mcdb`` brings its ablation variants along, and
    ``nice`` its entries under several configs or code versions)."""
    wanted = {m.strip().lower() for m in methods if m.strip()}
    run_hit = runs.method.str.lower().isin(wanted) | runs.base.str.lower().isin(wanted) | \
        runs.name.str.lower().isin(wanted)
    rep_hit = reported.method.str.lower().isin(wanted) if reported is not None else pd.Series(dtype=bool)
    known = set(runs.method.str.lower()) | set(runs.base.str.lower()) | set(runs.name.str.lower()) | \
        (set(reported.method.str.lower()) if reported is not None else set())
    unknown = sorted(wanted - known)
    if unknown:
        names = sorted(set(runs.method) | (set(reported.method) if reported is not None else set()))
        raise LeaderboardError(f"no runs or reported rows for {', '.join(map(repr, unknown))}; known: "
                               f"{', '.join(names) or '(none)'}")
    return runs[run_hit], (reported[rep_hit] if reported is not None else None)
