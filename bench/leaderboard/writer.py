"""`bench leaderboard` as one library call: read a results directory, render, write the files atomically."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.io import atomic_write_text
from bench.records import RunStore

from .errors import LeaderboardError
from .board import build_leaderboard
from .report import render, write_plots
from .reported import load_reported


@dataclass
class LeaderboardOutput:
    text: str
    out: Path | None = None  # where the text went; None: the caller prints it
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # corrupt records left out (skip_corrupt), one line each


def write_leaderboard(results_dir: str | Path, fmt: str = "md", out: str | Path | None = None, *,
                      table: str | None = None, reported: str | Path | None = None, use_reported: bool = True,
                      protocol: str | None = None, methods: Sequence[str] | None = None,
                      expect_subjects: Sequence[int] | None = None, expect_seeds: Sequence[int] | None = None,
                      metric: str = "top1", reference: str | None = None,
                      plots_dir: str | Path | None = None, skip_corrupt: bool = False) -> LeaderboardOutput:
    """Build the leaderboard of ``results_dir``'s runs; write it to ``out`` (and plots to ``plots_dir``) if given.

    Reported numbers come from ``reported`` if given (it must exist), else from ``results_dir/reported.csv`` when
    present; ``use_reported=False`` leaves them out. Corrupt records (bench/record_check.py) refuse the board with
    their list (CorruptRecordsError) unless ``skip_corrupt``, which leaves them out and lists them in ``skipped``.
    """
    results_dir = Path(results_dir)
    scan = RunStore(results_dir).scan(skip_corrupt)
    records = scan.records
    rep = None
    if use_reported:
        path = Path(reported) if reported is not None else results_dir / "reported.csv"
        if reported is not None and not path.is_file():
            raise LeaderboardError(f"reported results file {path} does not exist")
        rep = load_reported(path) if path.is_file() else None
    if not records and rep is None:
        skipped = "".join(f"\n  skipped corrupt record: {line}" for line in scan.corrupt)
        raise LeaderboardError(f"no run records in {results_dir / 'runs'} and no reported.csv to show{skipped}")
    board = build_leaderboard(records, rep, protocol=protocol, methods=methods, expect_subjects=expect_subjects,
                              expect_seeds=expect_seeds, metric=metric, reference=reference)
    text = render(board, fmt, table)
    result = LeaderboardOutput(text, skipped=scan.corrupt)
    if out is not None:
        result.out = Path(out)
        atomic_write_text(result.out, text)
    if plots_dir is not None:
        result.plots = write_plots(board, plots_dir, stem=result.out.stem if result.out else "leaderboard")
    return result
