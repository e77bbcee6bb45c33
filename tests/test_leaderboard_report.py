"""Plots are written as real PNG/SVG files, and the HTML report is self-contained and renders in headless Chromium."""
import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from bench.leaderboard import LeaderboardError, build_leaderboard, load_reported, render, write_plots
from leaderboard_data import REPORTED_CSV, fixed_records


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


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(exe, tmp_path, *args):
    # Flags from the environment notes: no sandbox as root, and no background connections on a closed network.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


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
