"""Display tables → Markdown, LaTeX (booktabs) and HTML markup. Markup only: no numbers are formatted here.

Cell text comes from run records and reported.csv, which anyone can edit: every renderer escapes all text, and a
source becomes a link only when it is a plain http(s) URL (`safe_url`), so a report can never run or link to code.
"""
from __future__ import annotations

import html
import re
import urllib.parse

from .tables import Cell, Table

# ------------------------------------------------------------------------------------------------------ markdown


def to_markdown(table: Table, heading: str = "###") -> str:
    head = [md_escape(h) for h in table.headers]
    lines = [f"{heading} {md_escape(table.title)}", ""]
    if table.banner:
        lines += [f"> **Warning:** {md_escape(table.banner)}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if a == "r" else ":---" for a in table.align) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if table.notes:
        lines.append("")
        lines.extend(md_escape(n) for n in table.notes)
    return "\n".join(lines) + "\n"


def _md_cell(cell: Cell) -> str:
    text = md_escape(cell.text)
    if cell.bold and text:
        text = f"**{text}**"
    if cell.link:
        url = safe_url(cell.link)
        source = f"[source]({url})" if url else f"source: {md_escape(cell.link)}"
        text = f"{text} ({source})" if text else source
    return text


# Backslash escapes (CommonMark) for every character that can open markup: emphasis, code, links, raw HTML or
# entities (<, >, &), and GFM's cell separator (|). '<' opens a tag, comment or autolink only when a letter, '/', '!'
# or '?' follows it (in Markdown and HTML alike), so our own "p < 0.05" stays as written. '_' is left alone: at
# worst it italicises, it cannot inject.
_MD_SPECIAL = re.compile(r"([\\`*\[\]>|&]|<(?=[A-Za-z/!?]))")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: object) -> str:
    """``text`` with control characters (line breaks, tabs, escapes) as spaces."""
    return _CONTROL.sub(" ", str(text))


def md_escape(text: object) -> str:
    """``text`` as literal Markdown on one line: a line break or a '|' must not end a table row or cell."""
    return _MD_SPECIAL.sub(r"\\\1", one_line(text))


# A link target must be a plain http(s) URL with a host: no javascript:, data:, vbscript:, file:, relative paths or
# scheme tricks (case, leading spaces, control characters) can pass, since nothing but these characters may.
_HTTP_URL = re.compile(r"https?://[^\s/?#\\]+[^\s]*", re.IGNORECASE)


def safe_url(url: object) -> str | None:
    """``url`` percent-encoded for an href or a Markdown link target, or None if it is not a plain http(s) URL."""
    text = str(url or "")
    if not _HTTP_URL.fullmatch(text) or _CONTROL.search(text):
        return None
    # Encode what could end a Markdown link or table cell, or an HTML attribute: ( ) [ ] | \ < > " ' and spaces.
    return urllib.parse.quote(text, safe="/:?#@!$&*+,;=%-._~")


# --------------------------------------------------------------------------------------------------------- latex

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
                "—": "---", "−": "$-$", "→": r"$\rightarrow$", "Δ": r"$\Delta$", "†": r"$^\dagger$",
                "<": r"$<$", ">": r"$>$"}


def to_latex(table: Table) -> str:
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{tex_escape(table.title)}}}"]
    if table.banner:
        lines.append(r"\fbox{\parbox{0.95\linewidth}{\textbf{Warning:} " + tex_escape(table.banner)
                     + r"}}\par\smallskip")
    lines += [r"\begin{tabular}{" + "".join(table.align) + "}", r"\toprule",
             " & ".join(tex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    previous = ""
    for row, kind in zip(table.rows, table.row_kinds or [""] * len(table.rows)):
        if kind in ("reported", "avg", "chance") and kind != previous:  # a rule sets them apart from our rows
            lines.append(r"\midrule")
        previous = kind
        lines.append(" & ".join(_tex_cell(c) for c in row) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    for note in table.notes:
        lines.append(r"\par\smallskip{\footnotesize " + tex_escape(note) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _tex_cell(cell: Cell) -> str:
    text = tex_escape(cell.text)
    return rf"\textbf{{{text}}}" if cell.bold and text else text


def tex_escape(text: str) -> str:
    # Control characters become spaces: a line break in a cell would end the row, a blank line the paragraph.
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in one_line(text))


# ---------------------------------------------------------------------------------------------------------- html


def to_html(table: Table) -> str:
    e = html.escape
    out = [f'<section class="table" id="{e(table.key)}-{e(_slug(table.title))}">', f"<h3>{e(table.title)}</h3>"]
    if table.banner:
        out.append(f'<p class="banner" role="alert"><strong>Warning:</strong> {e(table.banner)}</p>')
    out += [f'<table class="{e(table.key)}">', "<thead><tr>"]
    out += [f'<th class="{_align(a)}">{e(h)}</th>' for h, a in zip(table.headers, table.align)]
    out.append("</tr></thead><tbody>")
    for row, kind in zip(table.rows, table.row_kinds or [""] * len(table.rows)):
        out.append(f'<tr class="{e(kind)}">' if kind else "<tr>")
        for cell, a in zip(row, table.align):
            text = e(cell.text)
            if cell.bold and text:
                text = f"<strong>{text}</strong>"
            if cell.link:
                url = safe_url(cell.link)
                text += f' (<a href="{e(url)}">source</a>)' if url else f" (source: {e(cell.link)})"
            out.append(f'<td class="{_align(a)}">{text}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="note">{e(n)}</p>' for n in table.notes]
    out.append("</section>")
    return "\n".join(out) + "\n"


def _align(a: str) -> str:
    return "num" if a == "r" else "txt"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
