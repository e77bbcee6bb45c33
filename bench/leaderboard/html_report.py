"""The HTML report: one self-contained static file (inline CSS, plots as base64 PNG), nothing fetched from a network."""
from __future__ import annotations

import html
from typing import Sequence

from . import markup
from .board import Leaderboard
from .contents import display_tables, figures, inflation_tables, overview, synthetic_banner

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 78rem;
       padding: 0 1rem; color: #1d2433; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { border-bottom: 2px solid #d5dbe5; padding-bottom: .2rem;
margin-top: 2.4rem; } h3 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
table { border-collapse: collapse; margin: .3rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: .28rem .6rem; border-bottom: 1px solid #e3e7ee; vertical-align: top; }
th { background: #f2f5f9; text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.reported td { background: #fbf7ec; color: #5b5340; } tr.reported td:nth-child(2) { font-style: italic; }
tr.incomplete td:last-child { color: #a1331f; font-weight: 600; }
tr.avg td, tr.chance td { border-top: 2px solid #c8cfda; font-style: italic; }
table.matrix td strong { color: #0b6b2e; } table.stats td strong { color: #0b6b2e; }
p.note { color: #5a6478; font-size: .85rem; margin: .15rem 0; max-width: 70rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e3e7ee; }
figcaption { color: #5a6478; font-size: .85rem; }
.overview { color: #3c465a; }
p.banner { border-left: 4px solid #b3261e; background: #fcefed; color: #7a1c14; padding: .5rem .8rem;
           margin: .4rem 0; max-width: 70rem; }
tr.test-selected td { background: #fdf0e6; } tr.test-selected td strong { color: #a14a00; }
tr.unpaired td { color: #5a6478; font-style: italic; }
"""


def html_page(board: Leaderboard, which: Sequence[str], title: str, plots: bool = True) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f'<p class="overview">{e(overview(board))}</p>']
    figs = {}
    if plots:
        from . import plots as plotting  # matplotlib is slow to import: only pages with plots pay for it

        for protocol, name, fig in figures(board):
            figs.setdefault(protocol, []).append((name, plotting.png_base64(fig)))
            plotting.close(fig)
    for protocol in board.protocols:
        shown = display_tables(board, protocol, which)
        if not shown and not figs.get(protocol):
            continue  # a heading over nothing would be a section without runs
        body.append(f'<h2 id="protocol-{e(protocol)}">Protocol: {e(protocol)}</h2>')
        banner = synthetic_banner(board.runs[board.runs.protocol == protocol])
        if banner and not shown:  # plots alone: the banner the first table would carry
            body.append(f'<p class="banner" role="alert"><strong>Warning:</strong> {e(banner)}</p>')
        body.extend(markup.to_html(t) for t in shown)
        for name, b64 in figs.get(protocol, []):
            caption = _CAPTIONS[name].format(reference=board.reference_for(protocol) or "")
            body.append(f'<figure class="plot {e(name)}"><img alt="{e(protocol)} {e(name)} plot" '
                        f'src="data:image/png;base64,{b64}"><figcaption>{e(caption)}</figcaption></figure>')
    for table in inflation_tables(board, which):
        body.append('<h2 id="protocol-inflation">Protocol inflation</h2>')
        body.append(markup.to_html(table))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{e(title)}</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


_CAPTIONS = {
    "subjects": "Per-subject score of each method; error bars are the std over seeds.",
    "paired": "Per-subject difference of each method to {reference}; points are subjects, bars the mean difference.",
    "validation": "Validation score per epoch from the run records: mean over runs, band = min–max.",
}
