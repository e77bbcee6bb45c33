"""What every report format shows, whatever its markup: the overview line, the display tables of a protocol, the
numbers behind a table (CSV) and the figures.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from bench.records import COMPLETED

from . import aggregate as agg
from . import stats, tables
from .board import Leaderboard
from .errors import LeaderboardError

TABLES = ("main", "subjects", "kway", "ablation", "timings", "stats", "inflation")


def display_tables(board: Leaderboard, protocol: str, which: Sequence[str] = TABLES) -> list[tables.Table]:
    """The display tables of one protocol, in report order; empty ones (no ablation runs, …) are left out. The first
    carries the synthetic-data banner when any run of the protocol is on synthetic EEG, so every format and every
    ``--table`` choice shows it."""
    out = _protocol_tables(board, protocol, which)
    if out:
        out[0].banner = synthetic_banner(board.runs[board.runs.protocol == protocol])
    return out


def inflation_tables(board: Leaderboard, which: Sequence[str] = TABLES) -> list[tables.Table]:
    """The protocol-inflation table, when asked for and some published-protocol run exists (else nothing)."""
    if "inflation" not in which or not board.n_published_runs:
        return []
    table = tables.inflation_table(board.inflation)
    synthetic = board.inflation[board.inflation.synthetic]
    if len(synthetic):
        table.banner = tables.SYNTHETIC_BANNER.format(entries=", ".join(dict.fromkeys(synthetic.method)))
    return [table]


def synthetic_banner(runs: pd.DataFrame) -> str | None:
    """The banner for tables of ``runs`` when some ran on synthetic EEG (naming those entries), else None."""
    names = list(dict.fromkeys(runs.method[runs.synthetic]))
    return tables.SYNTHETIC_BANNER.format(entries=", ".join(names)) if names else None


def _protocol_tables(board: Leaderboard, protocol: str, which: Sequence[str]) -> list[tables.Table]:
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
    if which == "inflation":
        return board.inflation
    raise LeaderboardError(f"a CSV holds one table; choose --table from {', '.join(TABLES)}")


def overview(board: Leaderboard) -> str:
    runs = board.runs
    n_done = int((runs.status == COMPLETED).sum())
    lines = [f"{len(runs)} runs ({n_done} completed, {len(runs) - n_done} failed) of "
             f"{runs.method.nunique()} methods."]
    if board.n_published_runs:
        lines.append(f"Published-protocol runs: {board.n_published_runs}, in the protocol inflation table only.")
    if board.n_reported_hidden:
        lines.append(f"Literature rows not shown: {board.n_reported_hidden} (no run on real THINGS-EEG with their "
                     f"protocol and number of test images).")
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


def figures(board: Leaderboard):
    """Yield (protocol, name, Figure) for every plot the data supports; the caller closes each figure."""
    from . import plots  # matplotlib is slow to import: only reports that draw pay for it

    for protocol in board.protocols:
        methods = board.methods(protocol)
        if not methods:
            continue
        # a plot travels without the report's banner: its title says when synthetic data are in it
        runs = board.runs[(board.runs.protocol == protocol) & board.runs.method.isin(methods)]
        label = f"{protocol}, SYNTHETIC data" if runs.synthetic.any() else protocol
        ps = board.per_subject[board.per_subject.protocol == protocol]
        yield protocol, "subjects", plots.subject_bars(ps, methods, label, board.metric)
        if len(methods) >= 2:
            ref = board.reference_for(protocol)
            yield protocol, "paired", plots.paired_differences(ps, methods, ref, label, board.metric)
        curves = board.curves[(board.curves.protocol == protocol) & board.curves.method.isin(methods)]
        if len(curves):
            yield protocol, "validation", plots.validation_curves(curves, methods, label, board.metric)
