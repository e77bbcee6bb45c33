"""Literature rows stand only beside runs on real THINGS-EEG with as many test images as the paper; runs on synthetic
data carry a banner in every format; sections without runs are not rendered. The HTML report is checked in headless
Chromium."""
import dataclasses
import os
import re

import pytest
from rich.console import Console

from bench.leaderboard import build_leaderboard, csv_table, load_reported, render, rich_tables
from bench.leaderboard.aggregate import runs_frame
from bench.leaderboard.contents import figures
from leaderboard_data import REPORTED_CSV, chromium, completed, run_chromium

SYNTHETIC = {"synthetic": True, "n_test_images": 200}
BANNER = "Not comparable to published numbers"


def runs_of(method, base, data=None, protocol="intra", subjects=(1, 2, 3)):
    kwargs = {} if data is None else {"data": data}
    return [completed(method, None, protocol, s, 0, base, **kwargs) for s in subjects]


def with_n_test(records, n_test):
    for rec in records:
        rec.metrics["n_test"] = n_test
        rec.provenance["data"]["n_test_images"] = n_test
    return records


def board_of(records):
    return build_leaderboard(records, load_reported(REPORTED_CSV))


def assert_no_literature(board):
    assert board.reported is None and board.n_reported_hidden == 7  # every row of the fixture
    assert not (csv_table(board, "main").source == "reported").any()
    for fmt in ("md", "tex", "html"):
        text = render(board, fmt, plots=False)
        assert "ATM-S" not in text and "NICE" not in text and "| reported |" not in text, fmt


def test_a_synthetic_board_shows_no_literature_and_a_banner_in_every_format():
    board = board_of(runs_of("nice", 14.0, SYNTHETIC) + runs_of("mcdb", 20.0, SYNTHETIC))
    assert_no_literature(board)
    assert f"> **Warning:** {BANNER}: mcdb, nice ran on synthetic EEG" in render(board, "md")
    assert r"\textbf{Warning:} " + BANNER in render(board, "tex")
    assert f'<p class="banner" role="alert"><strong>Warning:</strong> {BANNER}' in render(board, "html", plots=False)
    for table in ("kway", "timings", "stats", "subjects"):  # whichever table is asked for carries it
        assert BANNER in render(board, "md", table), table
    main = csv_table(board, "main")
    assert main.synthetic.all() and main[main.subject == "avg"].flag.str.contains("synthetic data").all()
    console = Console(record=True, width=250)
    for table in rich_tables(board, "main"):
        console.print(table)
    assert f"Warning: {BANNER}" in console.export_text()
    assert all("SYNTHETIC data" in fig.axes[0].get_title() for _, _, fig in figures(board))


def test_real_runs_with_another_gallery_size_get_no_literature_either():
    board = board_of(with_n_test(runs_of("nice", 14.0), 100))
    assert_no_literature(board)
    assert BANNER not in render(board, "md")


def test_literature_stands_beside_real_runs_only_in_their_protocol():
    board = board_of(runs_of("nice", 14.0) + runs_of("mcdb", 20.0, SYNTHETIC))
    md = render(board, "md")
    assert "| ATM-S | reported |" in md and "| NICE | reported |" in md and "ATM-S (reported)" in md
    assert f"{BANNER}: mcdb ran on synthetic EEG" in md  # names the synthetic entry only
    flags = dict(zip(board.summary.method, board.summary.flag))
    assert flags == {"mcdb": "complete; synthetic data", "nice": "complete"}
    # the fixture's NICE inter row has no inter run beside it: no inter section at all, in any format
    assert board.protocols == ["intra"] and board.n_reported_hidden == 1
    for fmt in ("md", "tex", "html"):
        assert "inter:" not in render(board, fmt, plots=False), fmt


def test_records_without_a_data_block_fall_back_to_the_config():
    old = completed("nice", None, "intra", 1, 0, 14.0)
    del old.provenance["data"]
    real_root = dataclasses.replace(old, spec=dataclasses.replace(
        old.spec, config={**old.spec.config, "data": {"root": "/data/things-eeg"}}))
    default = dataclasses.replace(old, spec=dataclasses.replace(
        old.spec, config={**old.spec.config, "data": {"root": None}}, subject=2))
    frame = runs_frame([real_root, default]).set_index("subject")
    assert not frame.loc[1, "synthetic"] and frame.loc[2, "synthetic"]


def test_sections_without_runs_are_not_rendered():
    # one method, one protocol, no variants, no validation curves, no published runs
    records = runs_of("nice", 14.0)
    for rec in records:
        rec.metrics.pop("val")
    board = board_of(records)
    md = render(board, "md")
    assert re.findall(r"^### (.*)$", md, flags=re.M) == ["intra: leaderboard", "intra: per-subject top-1",
                                                         "intra: k-way identification", "intra: timings"]
    assert [name for _, name, _ in figures(board)] == ["subjects"]
    assert "Protocol: inter" not in md and "inflation" not in md.lower()
    assert "## Protocol" not in render(board, "md", "ablation")  # a heading over nothing is not rendered
    assert '<h2 id="protocol-intra">' not in render(board, "html", "ablation", plots=False)


def test_a_reported_csv_from_before_n_test_still_loads(tmp_path):
    old = tmp_path / "reported.csv"
    old.write_text("method,protocol,subject,top1,top5,source,caveat\nX,intra,avg,10,20,https://a.b/c,none\n")
    assert list(load_reported(old).n_test) == [200]


# --- in a browser ----------------------------------------------------------------------------------------------------


def dom_of(board, tmp_path, name):
    exe = chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
    page = tmp_path / f"{name}.html"
    page.write_text(render(board, "html", plots=False))
    dom = run_chromium(exe, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    return dom.stdout


def main_table_rows(dom):
    table = re.search(r'<table class="main">(.*?)</table>', dom, flags=re.S).group(1)
    return [re.sub(r"<[^>]+>", " ", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)]


def test_html_report_in_chromium_hides_literature_beside_synthetic_runs(tmp_path):
    dom = dom_of(board_of(runs_of("nice", 14.0, SYNTHETIC)), tmp_path, "synthetic")
    rows = main_table_rows(dom)
    assert len(rows) == 2 and "nice" in rows[1] and "reproduced" in rows[1]  # header and our row, nothing else
    assert 'class="reported"' not in dom and "ATM-S" not in dom and "arxiv.org" not in dom
    banner = re.search(r'<p class="banner"[^>]*>(.*?)</p>', dom, flags=re.S)
    assert banner and f"{BANNER}: nice ran on synthetic EEG" in re.sub(r"<[^>]+>", "", banner.group(1))


def test_html_report_in_chromium_shows_literature_beside_real_200_image_runs(tmp_path):
    dom = dom_of(board_of(runs_of("nice", 14.0)), tmp_path, "real")
    rows = main_table_rows(dom)
    assert any("ATM-S" in r and "reported" in r for r in rows) and any("NICE" in r for r in rows)
    assert dom.count('<tr class="reported">') >= 2 and 'class="banner"' not in dom
