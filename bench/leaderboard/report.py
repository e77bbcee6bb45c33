"""The leaderboard as a whole: build it from run records, render it as md / csv / tex / html, write it to disk.

`build_leaderboard` is the one place where records become numbers; everything after it only formats.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from bench.records import COMPLETED, RunRecord

from . import aggregate as agg
from . import markup, stats, tables
from .errors import LeaderboardError

FORMATS = ("md", "csv", "tex", "html")
TABLES = ("main", "subjects", "kway", "ablation", "timings", "stats")
METRICS = ("top1", "top5")


@dataclass
class Leaderboard:
    """Everything the renderers need, computed lazily from the (filtered) runs and reported rows."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    grids: dict[str, agg.Grid]
    reported: pd.DataFrame | None
    metric: str = "top1"
    alpha: float = 0.05
    reference: str | None = None
    shown_variants: frozenset = frozenset()
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
    method missing a subject that others ran is flagged even when shown alone.
    """
    if metric not in METRICS:
        raise LeaderboardError(f"metric {metric!r}, expected one of {', '.join(METRICS)}")
    records = list(records)
    runs = agg.runs_frame(records)
    grids = agg.expected_grids(runs, expect_subjects, expect_seeds)
    if protocol is not None:
        runs = runs[runs.protocol == protocol]
        reported = None if reported is None else reported[reported.protocol == protocol]
    shown_variants: frozenset = frozenset()
    if methods:
        runs, reported = _select_methods(runs, reported, methods)
        wanted = {m.strip().lower() for m in methods}
        shown_variants = frozenset(runs.method[runs.variant.notna() & runs.name.str.lower().isin(wanted)])
    if runs.empty and (reported is None or reported.empty):
        where = f" for protocol {protocol!r}" if protocol else ""
        raise LeaderboardError(f"nothing to show{where}: no run records and no reported rows match")
    if reference is not None and reference not in set(runs.method):
        raise LeaderboardError(f"reference method {reference!r} has no runs; known: "
                               f"{', '.join(sorted(set(runs.method))) or '(none)'}")
    curves = agg.validation_curves(records, runs)
    return Leaderboard(runs.reset_index(drop=True), curves, grids, reported, metric, alpha, reference,
                       shown_variants)


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


# ------------------------------------------------------------------------------------------------------ tables


def display_tables(board: Leaderboard, protocol: str, which: Sequence[str] = TABLES) -> list[tables.Table]:
    """The display tables of one protocol, in report order; empty ones (no ablation runs, …) are left out."""
    summary = board.summary[board.summary.protocol == protocol]
    rep = board.reported_long
    rep = None if rep is None else rep[rep.protocol == protocol]
    rep = None if rep is not None and rep.empty else rep
    runs = board.runs[board.runs.protocol == protocol]
    grid = board.grids.get(protocol)
    out = []
    if "main" in which:
        out.append(tables.main_table(protocol, summary, rep, grid))
    if "subjects" in which and (len(summary) or (rep is not None and (rep.subject != "avg").any())):
        ps = board.per_subject[board.per_subject.protocol == protocol]
        out.append(tables.subjects_table(protocol, ps, summary, rep, grid, board.metric))
    kcols = agg.kway_columns(runs.dropna(axis=1, how="all"))
    if "kway" in which and kcols:
        kway = board.kway[board.kway.protocol == protocol]
        n_test = runs.n_test.dropna().unique()
        out.append(tables.kway_table(protocol, kway, kcols, agg.chance_levels(runs),
                                     int(n_test[0]) if len(n_test) == 1 else None))
    ablation = board.ablation[board.ablation.protocol == protocol]
    if "ablation" in which and len(ablation):
        out.append(tables.ablation_table(protocol, ablation, board.metric, board.alpha))
    timings = board.timings[board.timings.protocol == protocol]
    if "timings" in which and len(timings):
        out.append(tables.timings_table(protocol, timings))
    methods = board.methods(protocol)
    if "stats" in which and len(methods) >= 2:
        pairs = board.pairs(protocol)
        out.append(tables.pairs_table(protocol, pairs, board.metric, board.alpha))
        diff, p = stats.significance_matrix(pairs, methods)
        out.append(tables.matrix_table(protocol, diff, p, board.metric, board.alpha))
    return out


def csv_table(board: Leaderboard, which: str = "main") -> pd.DataFrame:
    """The numbers behind one table, unformatted; ``main`` (and ``subjects``) is the long per-subject + avg form."""
    if which in ("main", "subjects"):
        return board.long
    if which == "kway":
        return board.kway
    if which == "ablation":
        return board.ablation
    if which == "timings":
        return board.timings
    if which == "stats":
        return board.all_pairs()
    raise LeaderboardError(f"a CSV holds one table; choose --table from {', '.join(TABLES)}")


# --------------------------------------------------------------------------------------------------- rendering


def render(board: Leaderboard, fmt: str = "md", table: str | None = None, title: str = "ThingsBench leaderboard",
           plots: bool = True) -> str:
    """The leaderboard as text in ``fmt``; ``table`` picks one table (default: all; ``main`` for csv)."""
    if fmt not in FORMATS:
        raise LeaderboardError(f"format {fmt!r}, expected one of {', '.join(FORMATS)}")
    which = _which(table, fmt)
    if fmt == "csv":
        return csv_table(board, which[0]).to_csv(index=False, float_format="%.6g", lineterminator="\n")
    if fmt == "html":
        from .html_report import html_page

        return html_page(board, which, title, plots)
    parts = []
    if fmt == "md":
        parts.append(f"# {markup.md_escape(title)}\n\n{markup.md_escape(_overview(board))}\n")
        for protocol in board.protocols:
            parts.append(f"## Protocol: {markup.md_escape(protocol)}\n")
            parts.extend(markup.to_markdown(t) for t in display_tables(board, protocol, which))
    else:
        # A comment line: only a line break (from a record's protocol name) could end it early.
        parts.append(f"% {markup.one_line(f'{title}: {_overview(board)}')}\n% Needs \\usepackage{{booktabs}}.\n")
        for protocol in board.protocols:
            parts.extend(markup.to_latex(t) for t in display_tables(board, protocol, which))
    return "\n".join(parts)


def render_leaderboard(records: Iterable[RunRecord], fmt: str = "md", *, reported: pd.DataFrame | None = None,
                       table: str | None = None, **build_kwargs) -> str:
    """One call from run records to text, e.g. for `bench run` to print the leaderboard of the runs it just did."""
    return render(build_leaderboard(records, reported, **build_kwargs), fmt, table)


def rich_tables(board: Leaderboard, table: str | None = None) -> list:
    """The display tables as `rich` Tables, for terminals; cell text is never read as rich markup."""
    from rich.table import Table as RichTable
    from rich.text import Text

    out = []
    for protocol in board.protocols:
        for t in display_tables(board, protocol, _which(table, "md")):
            rt = RichTable(title=t.title, caption=" ".join(t.notes) or None, caption_justify="left")
            for h, a in zip(t.headers, t.align):
                rt.add_column(h, justify="right" if a == "r" else "left", overflow="fold")
            for row, kind in zip(t.rows, t.row_kinds):
                rt.add_row(*(Text(c.text, style="bold" if c.bold else "") for c in row),
                           style="dim" if kind == "reported" else None)
            out.append(rt)
    return out


def _which(table: str | None, fmt: str) -> list[str]:
    if table in (None, "all"):
        if fmt == "csv" and table == "all":
            raise LeaderboardError(f"a CSV holds one table; choose --table from {', '.join(TABLES)}")
        return ["main"] if fmt == "csv" else list(TABLES)
    if table not in TABLES:
        raise LeaderboardError(f"table {table!r}, expected all or one of {', '.join(TABLES)}")
    return [table]


def _overview(board: Leaderboard) -> str:
    runs = board.runs
    n_done = int((runs.status == COMPLETED).sum())
    lines = [f"{len(runs)} runs ({n_done} completed, {len(runs) - n_done} failed) of "
             f"{runs.method.nunique()} methods."]
    for protocol in board.protocols:
        grid = board.grids.get(protocol)
        if grid is not None:
            lines.append(f"Expected for {protocol}: subjects {_ranges(grid.subjects)} × seeds "
                         f"{_ranges(grid.seeds)}.")
    return " ".join(lines)


def _ranges(values: Sequence[int]) -> str:
    """1,2,3,5 → '1–3, 5'."""
    out, start, prev = [], None, None
    for v in list(values) + [math.inf]:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(str(start) if start == prev else f"{start}–{prev}")
            start = prev = v
    return ", ".join(out)


# ------------------------------------------------------------------------------------------------------ writing


def write_plots(board: Leaderboard, directory: str | Path, stem: str = "leaderboard") -> list[Path]:
    """Per protocol: per-subject bars, paired differences to the reference, validation curves; PNG + SVG each."""
    from . import plots

    directory = Path(directory)
    written = []
    for protocol, name, fig in figures(board):
        written += plots.save_figure(fig, directory / f"{stem}_{protocol}_{name}")
        plots.close(fig)
    return written


def figures(board: Leaderboard):
    """Yield (protocol, name, Figure) for every plot the data supports; the caller closes each figure."""
    from . import plots

    for protocol in board.protocols:
        methods = board.methods(protocol)
        if not methods:
            continue
        ps = board.per_subject[board.per_subject.protocol == protocol]
        yield protocol, "subjects", plots.subject_bars(ps, methods, protocol, board.metric)
        if len(methods) >= 2:
            ref = board.reference_for(protocol)
            yield protocol, "paired", plots.paired_differences(ps, methods, ref, protocol, board.metric)
        curves = board.curves[(board.curves.protocol == protocol) & board.curves.method.isin(methods)]
        if len(curves):
            yield protocol, "validation", plots.validation_curves(curves, methods, protocol, board.metric)
