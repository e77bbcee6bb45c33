"""Plots are written as real PNG/SVG files, and the HTML report is self-contained and renders in headless Chromium."""
import html
import os
import re

import pytest
from PIL import Image

from bench.leaderboard import LeaderboardError, build_leaderboard, load_reported, render, write_plots
from leaderboard_data import REPORTED_CSV, chromium, fixed_records, run_chromium


@pytest.fixture(scope="module")
def board():
    return build_leaderboard(fixed_records(), load_reported(REPORTED_CSV))


def test_plots_are_written_as_png_and_svg(board, tmp_path):
    paths = write_plots(board, tmp_path / "plots", stem="lb")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"lb_{proto}_{kind}.{ext}" for proto in ("intra", "inter")
                           for kind in ("subjects", "paired", "validation") for ext in ("png", "svg"))
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 5000, p
        if p.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert len(Image.open(p).getcolors(maxcolors=1 << 20) or []) > 10  # something was drawn
        else:  # svg.fonttype "none" keeps titles as text, so each plot can be told by its title
            title = {"subjects": "per-subject top-1", "paired": "Δ to mcdb per subject",
                     "validation": "validation curves"}[p.stem.split("_")[-1]]
            assert b"<svg" in data[:1000] and title.encode() in data, p
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_unknown_reference_is_refused():
    with pytest.raises(LeaderboardError, match="reference method 'ridge' has no runs"):
        build_leaderboard(fixed_records(), reference="ridge")


def test_html_is_one_self_contained_file(board):
    page = render(board, "html")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # nothing is loaded from anywhere: no scripts, stylesheets, fonts or remote images
    assert not re.search(r"<script|<link|@import|url\(|src=\"(?!data:)", page)
    assert page.count('src="data:image/png;base64,') == 6
    for text in ("intra: leaderboard", "significance matrix", "reported", "ATM-S", "mcdb", "+spr (full)",
                 "missing: sub-03 seed 1; failed: sub-02 seed 0"):
        assert text in page, text


def test_html_report_renders_in_headless_chromium(board, tmp_path):
    exe = chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
    page = tmp_path / "leaderboard.html"
    page.write_text(render(board, "html"))
    shot = tmp_path / "shot.png"
    run = run_chromium(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    # A blank page is one colour; the report has text, table shading and the bold/green significance marks.
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50
    white = max(colors)[0] / (img.width * img.height)
    assert 0.3 < white < 0.98  # mostly background, but far from empty
    dom = run_chromium(exe, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    for needle in ("ThingsBench leaderboard", "intra: leaderboard", "reproduced", "reported", "ATM-S",
                   "intra: significance matrix (top-1)", "+10.6 (p=0.023)", "missing: sub-03 seed 1"):
        assert needle in text, needle
    assert dom.stdout.count("<img") == 6


def test_write_leaderboard_writes_the_report_and_plots_beside_it(tmp_path):
    from bench.leaderboard import write_leaderboard
    from bench.records import RunStore

    store = RunStore(tmp_path / "results")
    for rec in fixed_records():
        store.write(rec)
    out = tmp_path / "site" / "board.html"
    result = write_leaderboard(tmp_path / "results", "html", out, protocol="inter", use_reported=False,
                               plots_dir=tmp_path / "site" / "img")
    assert result.out == out and out.read_text() == result.text and "NICE" not in result.text
    assert sorted(p.name for p in result.plots) == sorted(f"board_inter_{k}.{e}" for k in ("subjects", "paired",
                                                                                           "validation")
                                                          for e in ("png", "svg"))


# --- hostile text: reports stay inert ------------------------------------------------------------------------------
# Each payload, if it ever ran, would change the page title; a link with any scheme but http(s) is refused as well.
PWN = "document.title='PWNED'"
HOSTILE_METHOD = f"<script>{PWN}</script>"
HOSTILE_VARIANT = f"<img src=x onerror=\"{PWN}\">"
HOSTILE_DEVICE = f"<svg onload=\"{PWN}\"></svg>"
HOSTILE_CAVEAT = f"<iframe src=\"javascript:{PWN}\"></iframe> a|b [x](javascript:{PWN}) `code` & \\input{{x}}\nnext"
HOSTILE_SOURCES = [f"javascript:{PWN}", f" JaVaScRiPt:{PWN}", "data:text/html,<script>alert(1)</script>",
                   "vbscript:msgbox(1)", f"java\tscript:{PWN}", "//evil.example/x", "file:///etc/passwd"]


def hostile_reported(tmp_path):
    import csv

    path = tmp_path / "reported.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "protocol", "subject", "top1", "top5", "source", "caveat"])
        for i, source in enumerate(HOSTILE_SOURCES):
            writer.writerow([f"<script>{PWN}</script>{i}", "intra", "avg", 20 + i, 50, source, HOSTILE_CAVEAT])
        writer.writerow(["Fine", "intra", "avg", 10, 30, "https://arxiv.org/abs/2308.13234", "a plain source"])
    return path


def hostile_records():
    """Run records whose method, ablation variant and device are hostile text (records are files anyone can edit)."""
    import dataclasses

    from leaderboard_data import completed

    records = []
    for subject in (1, 2, 3, 4):
        for method, variant, base in (("nice", None, 14.0), (HOSTILE_METHOD, None, 16.0),
                                      (HOSTILE_METHOD, HOSTILE_VARIANT, 15.0)):
            rec = completed("nice", variant, "intra", subject, 0, base)
            rec = dataclasses.replace(rec, spec=dataclasses.replace(rec.spec, method=method))
            rec.provenance["device"] = HOSTILE_DEVICE
            records.append(rec)
    return records


@pytest.fixture
def hostile_board(tmp_path):
    return build_leaderboard(hostile_records(), load_reported(hostile_reported(tmp_path)))


class _Tags:
    """Start tags and link targets of an HTML text, as a browser's tokenizer sees them."""

    def __init__(self, text):
        from html.parser import HTMLParser

        self.tags, self.hrefs = [], []
        parser = HTMLParser()
        parser.handle_starttag = lambda tag, attrs: (self.tags.append(tag),
                                                     self.hrefs.extend(v for k, v in attrs if k in ("href", "src")))
        parser.feed(text)


def assert_inert_html(text):
    tags = _Tags(text)
    assert not {"script", "iframe", "svg", "object", "embed"} & set(tags.tags), tags.tags
    assert all(re.match(r"https?://|data:image/png;base64,", h) for h in tags.hrefs), tags.hrefs


def test_hostile_text_is_escaped_in_the_html_report(hostile_board):
    page = render(hostile_board, "html", plots=False)
    assert_inert_html(page)
    assert _Tags(page).tags.count("img") == 0  # the variant's <img onerror> is text, not an element
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in page  # shown literally
    assert 'href="https://arxiv.org/abs/2308.13234"' in page  # a plain http(s) source is still a link
    for source in HOSTILE_SOURCES:  # every other source is text
        assert f"(source: {html.escape(source.strip())})" in page


def test_hostile_text_is_escaped_in_markdown(hostile_board):
    text = render(hostile_board, "md")
    assert r"\<script\>document.title='PWNED'\</script\>" in text and "<script" not in text.replace(r"\<", "")
    assert r"\<img src=x onerror" in text and r"\<svg onload" in text
    targets = re.findall(r"(?<!\\)\]\(([^)]*)\)", text)  # the targets of real (unescaped) Markdown links
    assert targets and all(t.startswith("https://") for t in targets), targets
    assert "[source](https://arxiv.org/abs/2308.13234)" in text
    assert r"a\|b \[x\](javascript:" in text and r"\`code\` \& \\input{x} next" in text
    # Every row of a table has as many cell separators as its header: no text split or added a cell or a row.
    for block in re.findall(r"(?:^\|.*\n)+", text, flags=re.M):
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(counts) == 1, block
    # And a CommonMark renderer (markdown-it, as rich ships it) makes no element and no link of them.
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    assert_inert_html(rendered)
    assert "<table>" in rendered and "PWNED" in rendered  # rendered, as text


def test_hostile_text_is_escaped_in_latex(hostile_board):
    tex = render(hostile_board, "tex")
    assert r"\input{x}" not in tex and r"\textbackslash{}input\{x\}" in tex
    assert r"\& \textbackslash{}input" in tex and "$<$script$>$" in tex
    for line in tex.splitlines():  # the caveat's line break did not end a table row early
        assert not line.startswith("next"), line


def test_only_plain_http_urls_become_links():
    from bench.leaderboard.markup import safe_url

    for url in [*HOSTILE_SOURCES, "JAVASCRIPT:x", "\x01javascript:x", "https:///x", "http://", "https://a.b/c d",
                "mailto:a@b.c", "/relative", "", None]:
        assert safe_url(url) is None, url
    assert safe_url("https://arxiv.org/abs/2503.04207") == "https://arxiv.org/abs/2503.04207"
    assert safe_url("HTTP://a.b/x(1)|\"'<>") == "HTTP://a.b/x%281%29%7C%22%27%3C%3E"


def test_hostile_report_is_inert_in_headless_chromium(hostile_board, tmp_path):
    exe = chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
    page = tmp_path / "hostile.html"
    page.write_text(render(hostile_board, "html", title="hostile report", plots=False))
    dom = run_chromium(exe, tmp_path, "--virtual-time-budget=2000", "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and "<title>" in dom.stdout, dom.stderr[-2000:]
    # The DOM after load: the title is ours (no payload ran), no payload became an element, every link is http(s).
    assert re.search(r"<title>(.*?)</title>", dom.stdout).group(1) == "hostile report"
    assert_inert_html(dom.stdout)
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom.stdout  # shown as text
    assert dom.stdout.count("<a ") == 1  # only the plain https source
