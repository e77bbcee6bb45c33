"""The protocol inflation table: published-protocol runs paired with honest runs of the same method, subject, seed and
data, numbers checked by hand; published runs never reach the leaderboard's own tables, grids or plots."""
import dataclasses
import math

import pandas as pd
import pytest
from rich.console import Console

from bench.leaderboard import build_leaderboard, csv_table, load_reported, render, rich_tables
from bench.leaderboard.contents import figures
from leaderboard_data import REPORTED_CSV, completed

# (method, subject) → top-1 of seeds 0 and 1. atm's published protocol picks its epoch on the test set.
HONEST = {("nice", 1): (10.0, 12.0), ("nice", 2): (20.0, 22.0), ("atm", 1): (15.0, 15.0), ("atm", 2): (25.0, 27.0)}
PUBLISHED = {("nice", 1): (11.0, 14.0), ("nice", 2): (21.0, 25.0), ("atm", 1): (20.0, 22.0), ("atm", 2): (30.0, 30.0)}
# Student t quantile t(0.975, 1): two subjects give one degree of freedom.
T_975_1 = 12.706204736174698


def run(method, protocol, subject, seed, top1, data="things-eeg"):
    rec = completed(method, None, protocol, subject, seed, 0.0)
    rec.metrics["top1"] = top1
    if protocol.startswith("published"):
        rec.metrics.update(test_selected=method == "atm", similarity="cosine",
                           main_gallery="centroid" if method == "nice" else "image")
    return dataclasses.replace(rec, spec=dataclasses.replace(rec.spec, data_fingerprint=data))


def honest_records():
    return [run(m, "intra", s, seed, v) for (m, s), vals in HONEST.items() for seed, v in enumerate(vals)]


def published_records():
    pairs = [run(m, "published", s, seed, v) for (m, s), vals in PUBLISHED.items() for seed, v in enumerate(vals)]
    # no honest partner: a subject the honest runs lack, and a seed whose honest run used other data
    return pairs + [run("nice", "published", 3, 0, 30.0), run("nice", "published", 1, 2, 40.0, data="other"),
                    run("nice", "intra", 1, 2, 9.0)]


@pytest.fixture(scope="module")
def board():
    return build_leaderboard(honest_records() + published_records(), load_reported(REPORTED_CSV))


def rows(board):
    return {(r.method, r.paired): r for r in board.inflation.itertuples()}


def test_paired_numbers_by_hand(board):
    nice, atm = rows(board)[("nice", True)], rows(board)[("atm", True)]
    # nice: per-subject differences (1+2)/2 = 1.5 and (1+3)/2 = 2.0; honest means 11, 21; published 12.5, 23
    assert (nice.n_pairs, nice.n_subjects) == (4, 2)
    assert (nice.honest_top1, nice.published_top1, nice.delta_top1) == pytest.approx((16.0, 17.75, 1.75))
    half = T_975_1 * math.sqrt(0.125) / math.sqrt(2)  # std of (1.5, 2.0) is √0.125
    assert (nice.ci_low, nice.ci_high) == pytest.approx((1.75 - half, 1.75 + half))
    # atm: differences (5+7)/2 = 6 and (5+3)/2 = 4; honest 15, 26; published 21, 30
    assert (atm.honest_top1, atm.published_top1, atm.delta_top1) == pytest.approx((20.5, 25.5, 5.0))
    assert (atm.ci_low, atm.ci_high) == pytest.approx((5.0 - T_975_1, 5.0 + T_975_1))  # std √2, √2/√2 = 1
    assert atm.test_selected and atm.n_test_selected == 4 and not nice.test_selected
    assert (atm.protocol, atm.published_protocol) == ("intra", "published")
    assert nice.settings == "centroid gallery, cosine" and atm.settings == "image gallery, cosine"


def test_unpaired_published_runs_are_listed_not_dropped(board):
    left = rows(board)[("nice", False)]
    assert left.n_pairs == 0 and math.isnan(left.honest_top1) and math.isnan(left.delta_top1)
    assert left.published_top1 == pytest.approx((30.0 + 40.0) / 2)  # sub-03 and sub-01 seed 2, one per subject
    assert left.flag == ("unpaired (no honest run of the same method, subject, seed and data): sub-01 seed 2, "
                         "sub-03 seed 0")
    assert rows(board)[("nice", True)].n_pairs == 4  # the seed-2 honest run on other data paired with nothing
    md = render(board, "md", "inflation")
    assert "| nice | intra → published | 0 | 2 | – | 35.0 | – | – |" in md and "sub-03 seed 0" in md


def test_test_selected_rows_are_marked_in_every_format(board):
    md = render(board, "md", "inflation")
    assert "| atm | intra → published | 4 | 2 | 20.5 | 25.5 | +5.0 | \\[-7.7, +17.7\\] | **test-selected** |" in md
    assert "| nice | intra → published | 4 | 2 | 16.0 | 17.8 | +1.8 | \\[-1.4, +4.9\\] | not on test |" in md
    html = render(board, "html", "inflation", plots=False)
    assert '<tr class="test-selected">' in html and "<strong>test-selected</strong>" in html
    assert '<tr class="unpaired">' in html
    tex = render(board, "tex", "inflation")
    assert r"atm & intra $\rightarrow$ published & 4 & 2 & 20.5 & 25.5 & +5.0 & [-7.7, +17.7] & " \
           r"\textbf{test-selected}" in tex
    csv = csv_table(board, "inflation").set_index(["method", "paired"])
    assert bool(csv.loc[("atm", True), "test_selected"]) and not bool(csv.loc[("nice", True), "test_selected"])
    assert "test_selected" in render(board, "csv", "inflation").splitlines()[0]
    console = Console(record=True, width=250)
    for table in rich_tables(board, "inflation"):
        console.print(table)
    atm_line = next(line for line in console.export_text().splitlines() if "│ atm" in line)
    assert "test-selected" in atm_line


def test_published_runs_never_reach_the_main_table_stats_grids_or_plots(board):
    honest = build_leaderboard(honest_records() + [run("nice", "intra", 1, 2, 9.0)], load_reported(REPORTED_CSV))
    assert set(board.runs.protocol) == {"intra"} and board.protocols == ["intra"]
    assert board.grids == honest.grids
    for frame in ("summary", "long", "per_subject", "kway", "timings", "ablation", "curves"):
        pd.testing.assert_frame_equal(getattr(board, frame), getattr(honest, frame), obj=frame)
    pd.testing.assert_frame_equal(board.all_pairs(), honest.all_pairs())
    tables = render(board, "md").split("## Protocol inflation")[0].split("\n", 3)[3]  # after the overview line
    assert tables.rstrip() == render(honest, "md").split("\n", 3)[3].rstrip()
    assert "published" not in tables
    assert [(p, name) for p, name, _ in figures(board)] == [(p, name) for p, name, _ in figures(honest)]


def test_the_section_needs_a_published_record():
    honest = build_leaderboard(honest_records(), load_reported(REPORTED_CSV))
    assert honest.inflation.empty
    for fmt in ("md", "tex", "html"):
        assert "Protocol inflation" not in render(honest, fmt, plots=False), fmt
    assert not [t for t in rich_tables(honest) if "inflation" in str(t.title)]


def test_protocol_filter_keeps_both_sides_of_a_pair(board):
    records = honest_records() + published_records()
    only = build_leaderboard(records, protocol="published")
    assert only.runs.empty and only.protocols == [] and len(only.inflation) == 3
    md = render(only, "md")
    assert "## Protocol: intra" not in md and "## Protocol inflation" in md
    intra = build_leaderboard(records, protocol="intra")
    pd.testing.assert_frame_equal(intra.inflation, board.inflation)
    assert build_leaderboard(records + [run("nice", "inter", 1, 0, 5.0)], protocol="inter").inflation.empty


def test_record_text_in_the_inflation_table_and_banner_is_escaped():
    from test_leaderboard_report import HOSTILE_METHOD, HOSTILE_VARIANT, assert_inert_html

    records = []
    for subject in (1, 2):
        for protocol in ("intra", "published"):
            rec = run("nice", protocol, subject, 0, 10.0 + subject)
            rec.provenance["data"] = {"synthetic": True, "n_test_images": 200}
            if protocol == "published":
                rec.metrics.update(main_gallery=HOSTILE_VARIANT, similarity="a|b\nc")
            records.append(dataclasses.replace(rec, spec=dataclasses.replace(rec.spec, method=HOSTILE_METHOD)))
    board = build_leaderboard(records)
    page = render(board, "html", plots=False)
    assert_inert_html(page)
    assert page.count('<p class="banner"') == 2 and "&lt;script&gt;" in page  # intra section and inflation table
    md = render(board, "md")
    assert "<script" not in md.replace(r"\<", "") and r"\<img src=x onerror" in md and r"a\|b c" in md
    assert r"$<$script$>$" in render(board, "tex")
