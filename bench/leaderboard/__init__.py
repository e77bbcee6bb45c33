"""Leaderboards from run records: tables, paired statistics, plots and reports (`bench leaderboard`).

    board = build_leaderboard(RunStore(results_dir).records(), load_reported("results/reported.csv"))
    print(render(board, "md"))

or, in one call, ``render_leaderboard(records, fmt="md")``; ``write_leaderboard`` is what the CLI runs.
"""
from .board import Leaderboard, build_leaderboard
from .contents import TABLES, csv_table, display_tables
from .errors import LeaderboardError
from .report import FORMATS, render, render_leaderboard, rich_tables, write_plots
from .reported import load_reported
from .writer import write_leaderboard

__all__ = ["FORMATS", "TABLES", "Leaderboard", "LeaderboardError", "build_leaderboard", "csv_table",
           "display_tables", "load_reported", "render", "render_leaderboard", "rich_tables",
           "write_leaderboard", "write_plots"]
