"""results/reported.csv: literature numbers shown beside our reproductions, each with its source and caveat.

``n_test`` is the number of test images the paper scored against (200 for every published THINGS-EEG number): a
literature row is shown only beside runs on real THINGS-EEG with that many test images. Files written before the
column existed (the first seven columns only) still load, every row counting as 200-way.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from .errors import LeaderboardError

COLUMNS = ["method", "protocol", "subject", "top1", "top5", "source", "caveat", "n_test"]
#: The header of files written before ``n_test`` existed; all their rows are THINGS-EEG's 200-way test.
OLD_COLUMNS = COLUMNS[:-1]
PROTOCOLS = ("intra", "inter")
#: Test images of THINGS-EEG's published test set (200 concepts × 1 image), the gallery every paper scores against.
THINGS_EEG_TEST_IMAGES = 200


def load_reported(path: str | Path) -> pd.DataFrame:
    """Read and validate a reported.csv; every problem names the file and line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header not in (COLUMNS, OLD_COLUMNS):
                raise LeaderboardError(f"{path}: header {','.join(header or [])!r}, expected {','.join(COLUMNS)!r} "
                                       f"(or, from before n_test, {','.join(OLD_COLUMNS)!r})")
            rows = [_parse_row(path, line_no, values, header) for line_no, values in enumerate(reader, start=2)
                    if any(v.strip() for v in values)]
    except OSError as exc:
        raise LeaderboardError(f"reported results {path} are unreadable: {exc}") from exc
    frame = pd.DataFrame(rows, columns=COLUMNS)
    dup = frame[frame.duplicated(["method", "protocol", "subject"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise LeaderboardError(f"{path}: {r.method} {r.protocol} subject {r.subject} appears more than once")
    return frame


def _parse_row(path: Path, line_no: int, values: list[str], header: list[str]) -> dict:
    where = f"{path}:{line_no}"
    if len(values) != len(header):
        raise LeaderboardError(f"{where}: {len(values)} fields, expected {len(header)}")
    row = dict(zip(header, (v.strip() for v in values)))
    if not row["method"]:
        raise LeaderboardError(f"{where}: empty method")
    if row["protocol"] not in PROTOCOLS:
        raise LeaderboardError(f"{where}: protocol {row['protocol']!r}, expected one of {', '.join(PROTOCOLS)}")
    if row["subject"] != "avg" and not (row["subject"].isdigit() and 1 <= int(row["subject"]) <= 10):
        raise LeaderboardError(f"{where}: subject {row['subject']!r}, expected 1..10 or avg")
    row["subject"] = row["subject"] if row["subject"] == "avg" else str(int(row["subject"]))
    row["top1"] = _percent(where, "top1", row["top1"], required=True)
    row["top5"] = _percent(where, "top5", row["top5"], required=False)
    row["n_test"] = _n_test(where, row.get("n_test", str(THINGS_EEG_TEST_IMAGES)))
    return row


def _n_test(where: str, text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise LeaderboardError(f"{where}: n_test {text!r} is not a number of test images (e.g. "
                               f"{THINGS_EEG_TEST_IMAGES})")
    return int(text)


def _percent(where: str, name: str, text: str, required: bool) -> float:
    if not text:
        if required:
            raise LeaderboardError(f"{where}: {name} is empty")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise LeaderboardError(f"{where}: {name} {text!r} is not a number") from None
    if not 0.0 <= value <= 100.0:
        raise LeaderboardError(f"{where}: {name} {value} is not a percentage in 0..100")
    return value
