"""results/reported.csv: literature numbers the leaderboard compares against. Schema, ranges and internal consistency."""
import csv
import re
from collections import defaultdict
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "results" / "reported.csv"
COLUMNS = ["method", "protocol", "subject", "top1", "top5", "source", "caveat", "n_test"]
SUBJECTS = [str(i) for i in range(1, 11)]
# Per-subject values are printed to 0.1, so their mean is known to ±0.05 and the printed average adds ±0.05.
ROUNDING = 0.1 + 1e-9


def load():
    with PATH.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


ROWS = load()


def value(text):
    return float(text) if text else None


def groups():
    out = defaultdict(dict)
    for row in ROWS:
        out[(row["method"], row["protocol"])][row["subject"]] = row
    return out


def test_rows_are_well_formed():
    keys = set()
    for row in ROWS:
        where = f"{row['method']}/{row['protocol']}/{row['subject']}"
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", row["method"]), where
        assert row["protocol"] in ("intra", "inter"), where
        assert row["subject"] in SUBJECTS + ["avg"], where
        assert row["source"].startswith("https://"), where
        assert row["n_test"] == "200", where  # every published THINGS-EEG number is 200-way
        key = (row["method"], row["protocol"], row["subject"])
        assert key not in keys, f"duplicate row {where}"
        keys.add(key)


def test_values_in_range():
    for row in ROWS:
        where = f"{row['method']}/{row['protocol']}/{row['subject']}"
        top1, top5 = value(row["top1"]), value(row["top5"])
        assert top1 is not None or top5 is not None, where
        # above chance (0.5 % top-1, 2.5 % top-5 over 200 test images) and at most 100 %
        assert top1 is None or 0.5 < top1 <= 100, where
        assert top5 is None or 2.5 < top5 <= 100, where
        if top1 is not None and top5 is not None:
            assert top5 >= top1, where
        assert re.fullmatch(r"(\d+\.\d)?", row["top1"]) and re.fullmatch(r"(\d+\.\d)?", row["top5"]), where


def test_per_subject_rows_come_as_ten_with_an_average():
    for (method, protocol), rows in groups().items():
        subjects = set(rows) - {"avg"}
        assert "avg" in rows, f"{method}/{protocol} has no avg row"
        assert subjects in (set(), set(SUBJECTS)), f"{method}/{protocol} has subjects {sorted(subjects)}"


def per_subject_groups():
    return sorted(k for k, rows in groups().items() if len(rows) == 11)


@pytest.mark.parametrize("key", per_subject_groups(), ids="/".join)
def test_average_is_the_mean_of_subjects(key):
    """A printed average that is not the mean must say so in its caveat, with the mean it should have been."""
    rows = groups()[key]
    for metric in ("top1", "top5"):
        mean = sum(float(rows[s][metric]) for s in SUBJECTS) / 10
        printed = float(rows["avg"][metric])
        if abs(mean - printed) > ROUNDING:
            stated = re.search(r"per-subject mean (\d+\.\d)/(\d+\.\d)", rows["avg"]["caveat"])
            assert stated, f"{key} {metric}: avg {printed} vs per-subject mean {mean:.2f}, undocumented"
            assert abs(float(stated.group(1 if metric == "top1" else 2)) - mean) <= 0.05 + 1e-9


def test_documented_atm_inconsistency_is_the_only_one():
    flagged = [key for key in per_subject_groups() if "per-subject mean" in groups()[key]["avg"]["caveat"]]
    assert flagged == [("atm", "intra")]


def test_coverage():
    have = set(groups())
    for method in ("nice", "nice-sa", "nice-ga", "atm", "ubp"):
        for protocol in ("intra", "inter"):
            assert (method, protocol) in per_subject_groups(), f"{method}/{protocol} per subject"
    for key in [("eegproject", "intra"), ("eegproject", "inter"), ("bravl", "intra"), ("mb2c", "intra"),
                ("neural-mcrl", "intra"), ("cognitioncapturer", "intra"), ("cognitioncapturer-all", "intra"),
                ("ve-sdn", "intra"), ("d2-fosa", "intra"), ("shrinkadapter", "intra"), ("cognitioncapturerpro", "intra"),
                ("neurobridge", "intra"), ("neuroclip", "intra"), ("shallow-alignment-vith14", "intra"),
                ("shallow-alignment-internvit", "intra"), ("samga", "intra"), ("nice-rerun-necomimi", "intra")]:
        assert key in have, key


@pytest.mark.parametrize("method, protocol, top1, top5", [
    ("nice-ga", "intra", "15.6", "42.8"),     # the NICE abstract's headline
    ("atm", "intra", "28.5", "60.4"),
    ("eegproject", "intra", "42.1", "74.5"),  # UBP Tab. 3 "Vanilla"
    ("ubp", "intra", "50.9", "79.7"),
])
def test_headline_numbers(method, protocol, top1, top5):
    row = groups()[(method, protocol)]["avg"]
    assert (row["top1"], row["top5"]) == (top1, top5)


def test_protocol_caveats_are_recorded():
    caveat = {(r["method"], r["protocol"], r["subject"]): r["caveat"] for r in ROWS}
    assert "concept-centroid gallery" in caveat[("nice", "intra", "avg")]
    assert "best test epoch" in caveat[("atm", "intra", "avg")]
    assert "any-of-3-experts oracle" in caveat[("cognitioncapturer-all", "intra", "avg")]
    assert "secondary summary" in caveat[("d2-fosa", "intra", "avg")]
