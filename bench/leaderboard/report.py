"""The leaderboard rendered: one renderer per format (md / csv / tex / html), `render` picks one from a table.

Renderers read the board (`board.py`) and what every format shows (`contents.py`); none of them imports this module,
so adding a format is one function and one entry in ``_RENDERERS``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from bench.records import RunRecord

from . import markup
from .board import Leaderboard, build_leaderboard
from .contents import TABLES, csv_table, display_tables, figures, inflation_tables, overview
from .errors import LeaderboardError
from .html_report import html_page


def _markdown(board: Leaderboard, which: Sequence[str], title: str, plots: bool) -> str:
    parts = [f"# {markup.md_escape(title)}\n\n{markup.md_escape(overview(board))}\n"]
    for protocol in board.protocols:
        shown = display_tables(board, protocol, which)
        if shown:  # a heading over nothing would be a section without runs
            parts.append(f"## Protocol: {markup.md_escape(protocol)}\n")
            parts.extend(markup.to_markdown(t) for t in shown)
    for table in inflation_tables(board, which):
        parts.append("## Protocol inflation\n")
        parts.append(markup.to_markdown(table))
    return "\n".join(parts)


def _latex(board: Leaderboard, which: Sequence[str], title: str, plots: bool) -> str:
    # A comment line: only a line break (from a record's protocol name) could end it early.
    parts = [f"% {markup.one_line(f'{title}: {overview(board)}')}\n% Needs \\usepackage{{booktabs}}.\n"]
    for protocol in board.protocols:
        parts.extend(markup.to_latex(t) for t in display_tables(board, protocol, which))
    parts.extend(markup.to_latex(t) for t in inflation_tables(board, which))
    return "\n".join(parts)


def _csv(board: Leaderboard, which: Sequence[str], title: str, plots: bool) -> str:
    return csv_table(board, which[0]).to_csv(index=False, float_format="%.6g", lineterminator="\n")


#: format → renderer(board, tables, title, plots); the order is the order `bench leaderboard --help` lists them in
_RENDERERS: dict[str, Callable[[Leaderboard, Sequence[str], str, bool], str]] = {
    "md": _markdown, "csv": _csv, "tex": _latex, "html": html_page}
FORMATS = tuple(_RENDERERS)


def render(board: Leaderboard, fmt: str = "md", table: str | None = None, title: str = "ThingsBench leaderboard",
           plots: bool = True) -> str:
    """The leaderboard as text in ``fmt``; ``table`` picks one table (default: all; ``main`` for csv)."""
    if fmt not in _RENDERERS:
        raise LeaderboardError(f"format {fmt!r}, expected one of {', '.join(FORMATS)}")
    return _RENDERERS[fmt](board, _which(table, fmt), title, plots)


def render_leaderboard(records: Iterable[RunRecord], fmt: str = "md", *, reported: pd.DataFrame | None = None,
                       table: str | None = None, **build_kwargs) -> str:
    """One call from run records to text, e.g. for `bench run` to print the leaderboard of the runs it just did."""
    return render(build_leaderboard(records, reported, **build_kwargs), fmt, table)


def rich_tables(board: Leaderboard, table: str | None = None) -> list:
    """The display tables as `rich` Tables, for terminals; cell text is never read as rich markup."""
    from rich.table import Table as RichTable  # only terminals need rich
    from rich.text import Text

    which = _which(table, "md")
    shown = [t for protocol in board.protocols for t in display_tables(board, protocol, which)]
    out = []
    for t in shown + inflation_tables(board, which):
        title = Text(t.title)
        if t.banner:  # above the table, where it cannot be missed
            title.append(f"\nWarning: {t.banner}", style="bold red")
        rt = RichTable(title=title, caption=Text(" ".join(t.notes)) if t.notes else None, caption_justify="left")
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


def write_plots(board: Leaderboard, directory: str | Path, stem: str = "leaderboard") -> list[Path]:
    """Per protocol: per-subject bars, paired differences to the reference, validation curves; PNG + SVG each."""
    from . import plots  # matplotlib is slow to import: only callers that write plots pay for it

    directory = Path(directory)
    written = []
    for protocol, name, fig in figures(board):
        written += plots.save_figure(fig, directory / f"{stem}_{protocol}_{name}")
        plots.close(fig)
    return written
