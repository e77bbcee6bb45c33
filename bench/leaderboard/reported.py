"""results/reported.csv: literature numbers shown beside our reproductions, each with its source and caveat."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from .errors import LeaderboardError

COLUMNS = ["method", "protocol", "subject", "top1", "top5", "source", "caveat"]
PROTOCOLS = ("intra", "inter")


def load_reported(path: str | Path) -> pd.DataFrame:
    """Read and validate a reported.csv; every problem names the file and line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header != COLUMNS:
                raise LeaderboardError(f"{path}: header {','.join(header or [])!r}, expected {','.join(COLUMNS)!r}")
            rows = [_parse_row(path, line_no, values) for line_no, values in enumerate(reader, start=2)
                    if any(v.strip() for v in values)]
    except OSError as exc:
        raise LeaderboardError(f"reported results {path} are unreadable: {exc}") from exc
    frame = pd.DataFrame(rows, columns=COLUMNS)
    dup = frame[frame.duplicated(["method", "protocol", "subject"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise LeaderboardError(f"{path}: {r.method} {r.protocol} subject {r.subject} appears more than once")
    return frame


def _parse_row(path: Path, line_no: int, values: list[str]) -> dict:
    where = f"{path}:{line_no}"
    if len(values) != len(COLUMNS):
        raise LeaderboardError(f"{where}: {len(values)} fields, expected {len(COLUMNS)}")
    row = dict(zip(COLUMNS, (v.strip() for v in values)))
    if not row["method"]:
        raise LeaderboardError(f"{where}: empty method")
    if row["protocol"] not in PROTOCOLS:
        raise LeaderboardError(f"{where}: protocol {row['protocol']!r}, expected one of {', '.join(PROTOCOLS)}")
    if row["subject"] != "avg" and not (row["subject"].isdigit() and 1 <= int(row["subject"]) <= 10):
        raise LeaderboardError(f"{where}: subject {row['subject']!r}, expected 1..10 or avg")
    row["subject"] = row["subject"] if row["subject"] == "avg" else str(int(row["subject"]))
    row["top1"] = _percent(where, "top1", row["top1"], required=True)
    row["top5"] = _percent(where, "top5", row["top5"], required=False)
    return row


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
