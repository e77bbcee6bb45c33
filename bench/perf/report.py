"""The perf report as rich tables (stdout) and JSON (``--json``)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from bench.io import atomic_write_text


def write_json(report: dict, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=1, default=str) + "\n")


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def tables(report: dict) -> list[Table]:
    m = report["machine"]
    out = []
    head = Table(title=f"bench perf ({report['preset']} preset)")
    head.add_column("machine")
    head.add_column("value", overflow="fold")
    for key in ("cpu", "cores", "ram_gib", "torch", "torch_threads", "device", "gpu", "load_average_start",
                "load_average_end"):
        if key in m:
            head.add_row(key, str(m[key]))
    if "generate_s" in report:
        head.add_row("synthetic subject written in", f"{_f(report['generate_s'], 1)} s")
    out.append(head)

    if "data" in report:
        d = report["data"]
        t = Table(title=f"data: one subject ({_f(d['source_gb'])} GB source, {_f(d['cache_gb'])} GB cache)")
        for col in ("step", "shape", "wall s", "runs", "peak RSS MB"):
            t.add_column(col)
        for key, label in (("train_first", "train: first conversion + load + average"),
                           ("train_cached", "train: cached open + load + average"),
                           ("test_first", "test: first conversion + load + average"),
                           ("test_cached", "test: cached open + load + average")):
            r = d[key]
            t.add_row(label, "×".join(map(str, r["shape"])), _f(r["wall_s"]),
                      " ".join(map(str, r.get("wall_s_runs", []))), _f(r["peak_rss_mb"], 0))
        out.append(t)

    if report.get("training"):
        t = Table(title="training: forward + backward + step, same model / loss / optimiser / batch")
        for col in ("method", "rows/epoch", "batch × steps × rounds", "ours samples/s", "ref samples/s", "ratio",
                    "ours epoch s", "ref epoch s", "batch ms ours/ref", "precision", "eval s"):
            t.add_column(col)
        for r in report["training"]:
            o, ref = r["ours"], r["reference"]
            t.add_row(r["method"], f"{r['epoch_rows']:,}", f"{r['batch_size']} × {r['measured_steps']} × {r['rounds']}",
                      _f(o["samples_per_s"], 0), _f(ref["samples_per_s"], 0), f"{r['ratio']:.2f}×",
                      _f(o["epoch_s"], 1), _f(ref["epoch_s"], 1),
                      f"{_f(r['batch_ms']['ours'], 1)} / {_f(r['batch_ms']['reference'], 1)}",
                      f"{o['precision']} / {ref['precision']}",
                      _f(r["eval"]["score_s"]))
        out.append(t)

    if "ray" in report:
        r = report["ray"]
        t = Table(title=f"ray: {r['trials']} runs of {r['method']} (~{_f(r['trial_s'], 1)} s each), "
                        f"concurrency {r['concurrency']}")
        for col in ("serial s", "ideal s", "ray init s", "ray grid s", "overhead %", "excl. init %"):
            t.add_column(col)
        t.add_row(_f(r["serial_s"], 1), _f(r["ideal_s"], 1), _f(r["ray_init_s"], 1), _f(r["ray_grid_s"], 1),
                  _f(r["overhead_pct"], 1), _f(r["overhead_excl_init_pct"], 1))
        out.append(t)
    return out
