"""Leaderboard tables from fixed run records: golden md/csv/tex, and the rules the goldens rely on.

Regenerate the goldens after an intended change with ``UPDATE_GOLDEN=1 pytest tests/test_leaderboard.py``
and review the diff; without it any difference fails.
"""
import dataclasses
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main as cli_main
from bench.leaderboard import (LeaderboardError, build_leaderboard, csv_table, load_reported, render,
                               render_leaderboard, rich_tables)
from bench.leaderboard.aggregate import runs_frame
from bench.records import RunStore
from leaderboard_data import REPORTED_CSV, completed, fixed_records

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def board():
    return build_leaderboard(fixed_records(), load_reported(REPORTED_CSV))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"{path} missing; create it with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden; if intended, rerun with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("fmt", ["md", "csv", "tex"])
def test_golden_outputs(board, fmt):
    check_golden(f"leaderboard.{fmt}", render(board, fmt))


@pytest.mark.parametrize("table", ["kway", "ablation", "timings", "stats"])
def test_golden_csv_of_each_table(board, table):
    check_golden(f"leaderboard_{table}.csv", render(board, "csv", table))


def test_failed_run_is_counted_never_averaged(board):
    long = board.long.set_index(["method", "protocol", "subject"])
    sub2 = long.loc[("atm", "intra", "2")]
    # Only seed 1 completed (15 + offset −2 + wobble −2 + seed +1); the failed seed's bogus 99 must not enter.
    assert sub2.top1_mean == pytest.approx(12.0) and sub2.n_seeds == 1 and sub2.n_failed == 1
    assert math.isnan(sub2.top1_std)
    avg = long.loc[("atm", "intra", "avg")]
    assert avg.n_failed == 1 and not avg.complete
    assert avg.flag == "missing: sub-03 seed 1; failed: sub-02 seed 0"
    assert long.loc[("nice", "intra", "avg")].flag == "complete"
    timings = board.timings.set_index(["method", "protocol"])
    assert timings.loc[("atm", "intra")].n_runs == 14  # 16 cells − 1 missing − 1 failed


def test_across_subjects_is_mean_of_subject_means(board):
    long = board.long
    part = long[(long.method == "atm") & (long.protocol == "intra") & (long.subject != "avg")]
    avg = long[(long.method == "atm") & (long.protocol == "intra") & (long.subject == "avg")].iloc[0]
    assert avg.top1_mean == pytest.approx(part.top1_mean.mean())
    assert avg.top1_std == pytest.approx(part.top1_mean.std(ddof=1))
    # a plain mean over runs would weight the subjects with two seeds more; the two must differ here
    runs = board.runs[(board.runs.method == "atm") & (board.runs.protocol == "intra") & (board.runs.status == "completed")]
    assert runs.top1.mean() != pytest.approx(avg.top1_mean)


def test_expected_grid_override_flags_missing_subjects_and_seeds():
    b = build_leaderboard(fixed_records(), protocol="inter", expect_subjects=[1, 2, 3, 4, 5], expect_seeds=[0, 1])
    flags = dict(zip(b.summary.method, b.summary.flag))
    assert flags["nice"] == ("missing: sub-01 seed 1, sub-02 seed 1, sub-03 seed 1, sub-04 seed 1, "
                             "sub-05 all seeds")
    assert not b.summary.complete.any()
    assert "4/5" in render(b, "md", "main")


def test_ablation_rows_in_canonical_order_with_deltas(board):
    abl = board.ablation
    assert list(abl.variant) == ["base", "+text", "+adapter", "+mcdb", "+spr (full)"]
    assert list(abl.entry)[-1] == "mcdb"
    assert math.isnan(abl.delta_top1.iloc[0])
    assert list(abl.delta_top1.iloc[1:].round(6)) == [3.0, 1.5, 1.5, 1.0]
    # every step improves every subject: 2/2^8 two-sided, Holm over 4 steps
    assert list(abl.p_step_holm.iloc[1:]) == pytest.approx([4 * 2 / 256] * 4)


def test_variants_stay_out_of_the_main_table_unless_asked_for(board):
    assert set(board.summary.method) == {"mcdb", "atm", "nice"}
    picked = build_leaderboard(fixed_records(), methods=["mcdb[+text]", "nice"], protocol="intra")
    assert list(picked.summary.method) == ["mcdb[+text]", "nice"]
    only_mcdb = build_leaderboard(fixed_records(), methods=["MCDB"], protocol="intra")
    assert list(only_mcdb.summary.method) == ["mcdb"] and len(only_mcdb.ablation) == 5
    with pytest.raises(LeaderboardError, match="no runs or reported rows for 'nope'"):
        build_leaderboard(fixed_records(), methods=["nope"])


def test_stats_cover_entries_and_flag_significance(board):
    pairs = board.pairs("intra").set_index(["method_a", "method_b"])
    assert list(pairs.index) == [("mcdb", "atm"), ("mcdb", "nice"), ("atm", "nice")]
    assert pairs.loc[("mcdb", "nice")].p_perm == pytest.approx(2 / 256)
    assert pairs.loc[("mcdb", "nice")].p_holm == pytest.approx(3 * 2 / 256)
    assert bool(pairs.loc[("mcdb", "atm")].significant) and not bool(pairs.loc[("atm", "nice")].significant)
    md = render(board, "md", "stats")
    assert "significance matrix" in md and "**+10.6 (p=0.023)**" in md


def test_runs_of_one_method_under_two_configs_are_separate_entries():
    records = [completed("nice", None, "intra", s, 0, 14.0) for s in (1, 2)]
    other = completed("nice", None, "intra", 1, 0, 20.0)
    other.spec = dataclasses.replace(other.spec, config={"train": {"lr": 1.0}})
    frame = runs_frame(records + [other])
    names = sorted(frame.method.unique())
    assert len(names) == 2 and all(n.startswith("nice@") for n in names)


def test_same_cell_with_different_data_is_refused():
    a = completed("nice", None, "intra", 1, 0, 14.0)
    b = completed("nice", None, "intra", 1, 0, 15.0)
    b.spec = dataclasses.replace(b.spec, data_fingerprint="other-data")
    with pytest.raises(LeaderboardError, match="same config but different data"):
        runs_frame([a, b])


def test_completed_record_without_top1_is_refused():
    rec = completed("nice", None, "intra", 1, 0, 14.0)
    rec.metrics = {"top5": 40.0}
    with pytest.raises(LeaderboardError, match=r"nice intra sub-01 seed 0 .* has no numeric metrics.top1"):
        runs_frame([rec])


def test_reported_avg_is_computed_from_subjects_only_when_missing(tmp_path):
    path = tmp_path / "reported.csv"
    path.write_text("method,protocol,subject,top1,top5,source,caveat,n_test\n"
                    "X,intra,1,10,,u,c,200\nX,intra,2,20,,u,c,200\n")
    real_run = [completed("nice", None, "intra", 1, 0, 14.0)]  # literature rows stand only beside real runs
    b = build_leaderboard(real_run, load_reported(path))
    avg = b.long[(b.long.method == "X") & (b.long.subject == "avg")].iloc[0]
    assert avg.top1_mean == pytest.approx(15.0) and avg.top1_std == pytest.approx(math.sqrt(50))
    assert math.isnan(avg.top5_mean) and avg.source == "reported"
    fixture = load_reported(REPORTED_CSV)
    atm = build_leaderboard(real_run, fixture).long.query("method == 'ATM-S' and subject == 'avg'").iloc[0]
    assert atm.top1_mean == 28.5  # the paper's own average, verbatim, not the mean of the four listed subjects


@pytest.mark.parametrize("body, message", [
    ("method,protocol,subject,top1,top5,source\n",
     "expected 'method,protocol,subject,top1,top5,source,caveat,n_test'"),
    ("method,protocol,subject,top1,top5,source,caveat,n_test\nX,intra,avg,1,2,u,c,\n", "n_test '' is not a number"),
    ("method,protocol,subject,top1,top5,source,caveat,n_test\nX,intra,avg,1,2,u,c\n", "7 fields, expected 8"),
    ("method,protocol,subject,top1,top5,source,caveat\nX,loso,avg,1,2,u,c\n", r"reported.csv:2: protocol 'loso'"),
    ("method,protocol,subject,top1,top5,source,caveat\nX,intra,11,1,2,u,c\n", "subject '11'"),
    ("method,protocol,subject,top1,top5,source,caveat\nX,intra,avg,n/a,2,u,c\n", "top1 'n/a' is not a number"),
    ("method,protocol,subject,top1,top5,source,caveat\nX,intra,avg,,2,u,c\n", "top1 is empty"),
    ("method,protocol,subject,top1,top5,source,caveat\nX,intra,avg,1,2,u,c\nX,intra,avg,3,4,u,c\n",
     "appears more than once"),
])
def test_reported_csv_problems_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "reported.csv"
    path.write_text(body)
    with pytest.raises(LeaderboardError, match=message):
        load_reported(path)


def test_csv_holds_one_table(board):
    with pytest.raises(LeaderboardError, match="a CSV holds one table"):
        render(board, "csv", "all")
    assert list(csv_table(board, "main").columns[:9]) == ["method", "protocol", "subject", "n_seeds", "top1_mean",
                                                         "top1_std", "top5_mean", "top5_std", "source"]


def test_render_leaderboard_for_bench_run_and_rich_form(board):
    text = render_leaderboard(fixed_records(), "md", reported=load_reported(REPORTED_CSV))
    assert text == render(board, "md")
    from rich.console import Console

    console = Console(record=True, width=200)
    for t in rich_tables(board, "timings"):
        console.print(t)
    out = console.export_text()
    assert "mcdb[+text]" in out and "intra: timings" in out  # brackets printed, not eaten as rich markup


def write_results(tmp_path) -> Path:
    store = RunStore(tmp_path / "results")
    for rec in fixed_records():
        store.write(rec)
    (tmp_path / "results" / "reported.csv").write_text(REPORTED_CSV.read_text())
    return tmp_path / "results"


def test_cli_writes_the_golden_csv(tmp_path, capsys):
    results = write_results(tmp_path)
    out = tmp_path / "lb.csv"
    cli_main(["leaderboard", "--results-dir", str(results), "--format", "csv", "--out", str(out)])
    assert out.read_text() == (GOLDEN / "leaderboard.csv").read_text()
    cli_main(["leaderboard", "--results-dir", str(results), "--protocol", "inter", "--no-reported",
              "--table", "main"])
    printed = capsys.readouterr().out
    assert "| mcdb | reproduced | **8.9 ± 2.1**" in printed and "reported" not in printed.split("### ")[1]


def test_cli_names_a_corrupt_record_and_bad_input(tmp_path, capsys):
    results = write_results(tmp_path)
    bad = results / "runs" / "0000deadbeef0000.json"
    bad.write_text(json.dumps({"schema": "thingsbench-run/1", "method": "x"}))
    with pytest.raises(SystemExit) as exc:
        cli_main(["leaderboard", "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "0000deadbeef0000.json" in err and "Traceback" not in err
    bad.unlink()
    with pytest.raises(SystemExit) as exc:
        cli_main(["leaderboard", "--results-dir", str(results), "--reported", str(tmp_path / "absent.csv")])
    assert exc.value.code == 1 and "absent.csv does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["leaderboard", "--results-dir", str(tmp_path / "empty")])
    assert exc.value.code == 1 and "no run records" in capsys.readouterr().err


def test_chance_row_and_kway_columns(board):
    md = render(board, "md", "kway")
    assert "| chance | 50.0 | 25.0 | 10.0 | 2.0 | 10.0 | 1.0 | 5.0 | 0.5 | 2.5 |" in md
    kway = board.kway.set_index(["method", "protocol"])
    assert kway.loc[("mcdb", "intra")].k2_top1_mean == pytest.approx(70 + kway.loc[("mcdb", "intra")].top1_mean)


def test_long_table_is_a_pure_function_of_records():
    a = build_leaderboard(fixed_records()).long
    b = build_leaderboard(list(reversed(fixed_records()))).long
    pd.testing.assert_frame_equal(a, b)


CODE_A, CODE_B = "1a2b3c4d5e6f", "9f8e7d6c5b4a"


def fingerprinted(changed=("nice", "mcdb[+text]")) -> list:
    """The fixed records, computed by code A, except that ``changed`` entries ran subjects 5-8 (intra) with code B."""
    records = fixed_records()
    for rec in records:
        name = rec.spec.method + (f"[{rec.spec.variant}]" if rec.spec.variant else "")
        late = name in changed and rec.spec.protocol == "intra" and rec.spec.subject >= 5
        rec.code_fingerprint = CODE_B if late else CODE_A
    return records


def test_one_code_fingerprint_changes_nothing():
    board = build_leaderboard(fingerprinted(changed=()), load_reported(REPORTED_CSV))
    for fmt in ("md", "csv", "tex"):
        check_golden(f"leaderboard.{fmt}", render(board, fmt))


def test_two_code_fingerprints_are_two_rows_with_a_note_never_one_mean():
    board = build_leaderboard(fingerprinted(), load_reported(REPORTED_CSV))
    intra = board.summary[board.summary.protocol == "intra"].set_index("method")
    assert "nice" not in intra.index
    a, b = intra.loc["nice (code 1a2b3c)"], intra.loc["nice (code 9f8e7d)"]
    assert (a.n_subjects, b.n_subjects) == (4, 4)
    assert "code changed between runs" in a.flag and "missing: sub-05 all seeds" in a.flag
    assert "code changed between runs" not in intra.loc["mcdb"].flag
    # inter ran under one code only: one row, as before
    assert "nice" in set(board.summary[board.summary.protocol == "inter"].method)
    md = render(board, "md", "main")
    assert "| nice (code 9f8e7d) | reproduced |" in md and "each version is its own row" in md
    # a paired test against nice uses one code version's subjects only
    pairs = board.pairs("intra").set_index(["method_a", "method_b"])
    versus_a = pairs.loc[("mcdb", "nice (code 1a2b3c)")]
    early = [r.metrics["top1"] for r in fixed_records()
             if (r.spec.method, r.spec.protocol) == ("nice", "intra") and r.spec.subject <= 4]
    assert versus_a.n == 4 and versus_a.mean_b == pytest.approx(sum(early) / len(early))
    ablation = board.ablation[board.ablation.method == "mcdb"]
    assert {"+text (code 1a2b3c)", "+text (code 9f8e7d)", "base"} <= set(ablation.variant)
    narrowed = build_leaderboard(fingerprinted(), methods=["nice"])
    assert set(narrowed.runs.method) == {"nice", "nice (code 1a2b3c)", "nice (code 9f8e7d)"}
