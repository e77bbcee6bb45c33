"""Display tables → Markdown, LaTeX (booktabs) and HTML markup. Markup only: no numbers are formatted here."""
from __future__ import annotations

import html

from .tables import Cell, Table

# ------------------------------------------------------------------------------------------------------ markdown


def to_markdown(table: Table, heading: str = "###") -> str:
    head = [_md_escape(h) for h in table.headers]
    lines = [f"{heading} {table.title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if a == "r" else ":---" for a in table.align) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if table.notes:
        lines.append("")
        lines.extend(_md_escape(n, table_cell=False) for n in table.notes)
    return "\n".join(lines) + "\n"


def _md_cell(cell: Cell) -> str:
    text = _md_escape(cell.text)
    if cell.bold and text:
        text = f"**{text}**"
    if cell.link:
        text = f"{text} ([source]({cell.link}))" if text else f"[source]({cell.link})"
    return text


def _md_escape(text: str, table_cell: bool = True) -> str:
    text = str(text).replace("\n", " ").replace("*", r"\*")
    return text.replace("|", r"\|") if table_cell else text


# --------------------------------------------------------------------------------------------------------- latex

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
                "—": "---", "−": "$-$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "<": r"$<$", ">": r"$>$"}


def to_latex(table: Table) -> str:
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{tex_escape(table.title)}}}",
             r"\begin{tabular}{" + "".join(table.align) + "}", r"\toprule",
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
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


# ---------------------------------------------------------------------------------------------------------- html


def to_html(table: Table) -> str:
    e = html.escape
    out = [f'<section class="table" id="{e(table.key)}-{e(_slug(table.title))}">', f"<h3>{e(table.title)}</h3>",
           f'<table class="{e(table.key)}">', "<thead><tr>"]
    out += [f'<th class="{_align(a)}">{e(h)}</th>' for h, a in zip(table.headers, table.align)]
    out.append("</tr></thead><tbody>")
    for row, kind in zip(table.rows, table.row_kinds or [""] * len(table.rows)):
        out.append(f'<tr class="{e(kind)}">' if kind else "<tr>")
        for cell, a in zip(row, table.align):
            text = e(cell.text)
            if cell.bold and text:
                text = f"<strong>{text}</strong>"
            if cell.link:
                text += f' (<a href="{e(cell.link)}">source</a>)'
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
