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
    if "malloc_keeps_freed_memory" in report:
        head.add_row("glibc keeps freed memory (bench.allocator)", str(report["malloc_keeps_freed_memory"]))
    if "generate_s" in report:
        head.add_row("synthetic subject written in", f"{_f(report['generate_s'], 1)} s")
    out.append(head)

    if "data" in report:
        d = report["data"]
        t = Table(title=f"data: one subject ({_f(d['source_gb'])} GB source, {_f(d['cache_gb'])} GB cache)")
        for col in ("step", "shape", "wall s", "runs", "peak RSS MiB"):
            t.add_column(col)
        for key, label in (("train_first", "train: first conversion + load + average"),
                           ("train_averaged", "train: cached open + load + average (+ store the mean)"),
                           ("train_cached", "train: cached open + load of the stored mean"),
                           ("test_first", "test: first conversion + load + average"),
                           ("test_cached", "test: cached open + load of the stored mean")):
            if key not in d:  # a report from before the mean was stored
                continue
            r = d[key]
            t.add_row(label, "×".join(map(str, r["shape"])), _f(r["wall_s"]),
                      " ".join(map(str, r.get("wall_s_runs", []))), _f(r["peak_rss_mb"], 0))
        out.append(t)

    if "peak" in report:
        out.append(_peak_table(report["peak"]))
    if report.get("training"):
        out.extend(_training_tables(report["training"]))

    if "ray" in report:
        r = report["ray"]
        t = Table(title=f"ray: {r['trials']} runs of {r['method']} (~{_f(r['trial_s'], 1)} s each), "
                        f"concurrency {r['concurrency']}")
        for col in ("serial s", "ideal s", "ray init s", "ray grid s", "overhead %", "excl. init %"):
            t.add_column(col)
        t.add_row(_f(r["serial_s"], 1), _f(r["ideal_s"], 1), _f(r["ray_init_s"], 1), _f(r["ray_grid_s"], 1),
                  _f(r["overhead_pct"], 1), _f(r["overhead_excl_init_pct"], 1))
        out.append(t)
        out.append(_ray_breakdown_table(r))
        out.append(_ray_cpu_table(r))
    return out


def _ray_breakdown_table(r: dict) -> Table:
    t = Table(title="ray: where the overhead goes (training summed over the runs; outside training per trial slot)")
    for col in ("training: serial s", "side by side s (%)", "Ray s (%)", "outside training: serial s",
                "Ray s", "ideal on this machine s", "overhead vs it %"):
        t.add_column(col)
    t.add_row(_f(r["serial_train_s"], 1),
              f"{_f(r['side_by_side_train_s'], 1)} ({_f(r['side_by_side_slowdown_pct'], 1)})",
              f"{_f(r['ray_train_s'], 1)} ({_f(r['train_slowdown_pct'], 1)})", _f(r["serial_outside_train_s"], 1),
              _f(r["grid_outside_train_s"], 1), _f(r["machine_ideal_s"], 1), _f(r["overhead_vs_machine_pct"], 1))
    return t


def _ray_cpu_table(r: dict) -> Table:
    t = Table(title="ray: the grid's CPU-seconds (cores × wall), by who used them")
    for col in ("available", "trials", "driver", "Ray's processes", "other processes", "idle", "of it I/O wait",
                "outside trials %"):
        t.add_column(col)
    t.add_row(*(_f(r[k], 1) for k in ("cpu_available_s", "cpu_trials_s", "cpu_driver_s", "cpu_ray_processes_s",
                                      "cpu_others_s", "cpu_idle_s", "cpu_iowait_s", "cpu_outside_trials_pct")))
    return t


def _gflops(x: float | None) -> str:
    return "-" if x is None else _f(x / 1e9, 1)


def _peak_table(peak: dict) -> Table:
    timings = peak.get("float32_timings")
    t = Table(title=f"peak: {peak['gemm_n']}×{peak['gemm_n']} GEMM in this process, GFLOP/s"
                    + (" (best of before and after the training steps)" if timings else ""))
    t.add_column("float32")
    t.add_column("bfloat16")
    if timings:
        t.add_column("float32 before / after")
    t.add_row(_gflops(peak["float32"]), _gflops(peak["bfloat16"]),
              *([" / ".join(_gflops(x) for x in timings)] if timings else []))
    return t


def _training_tables(rows: list[dict]) -> list[Table]:
    """Steps (speed and fraction of the GEMM peak), then epoch and time to a trained model, ours vs reference."""
    steps = Table(title="training step: forward + backward + update, same weights / loss / optimiser / batch; "
                        "reference = the reference code's loop and module structure")
    for col in ("method", "batch × steps × rounds", "GFLOP/step", "ours samples/s", "ref samples/s", "ratio",
                "ours GFLOP/s (peak %)", "ref GFLOP/s (peak %)", "precision", "batch ms ours/ref"):
        steps.add_column(col)
    epochs = Table(title="epoch (steps + per-epoch validation) and time to a trained model, extrapolated from the "
                         "measured steps and validation passes")
    for col in ("method", "rows/epoch", "val rows", "val s ours/ref", "ours epoch s", "ref epoch s", "speed-up",
                "epochs", "ours trained", "ref trained", "eval s"):
        epochs.add_column(col)
    for r in rows:
        o, ref, v = r["ours"], r["reference"], r["validation"]
        steps.add_row(r["method"], f"{r['batch_size']} × {r['measured_steps']} × {r['rounds']}",
                      _f(r["step_gflop"], 1), _f(o["samples_per_s"], 0), _f(ref["samples_per_s"], 0),
                      f"{r['ratio']:.2f}×", f"{_f(o['gflop_per_s'], 1)} ({_f(100 * o['peak_fraction'], 0)} %)",
                      f"{_f(ref['gflop_per_s'], 1)} ({_f(100 * ref['peak_fraction'], 0)} %)",
                      f"{o['precision']} / {ref['precision']}",
                      f"{_f(r['batch_ms']['ours'], 1)} / {_f(r['batch_ms']['reference'], 1)}")
        epochs.add_row(r["method"], f"{r['epoch_rows']:,}", str(v["rows"]),
                       f"{_f(v['ours'])} / {_f(v['reference'])}", _f(o["epoch_s"], 1), _f(ref["epoch_s"], 1),
                       f"{r['epoch_ratio']:.2f}×", str(r["epochs"]), _duration(o["trained_s"]),
                       _duration(ref["trained_s"]), _f(r["eval"]["score_s"]))
    own = [r for r in rows if "reference_own_process" in r]
    if not own:
        return [steps, epochs]
    as_run = Table(title="ours against the reference loop in a process of its own, on glibc's default allocator (as "
                         "the reference code runs; above, both ran on bench.allocator's setting)")
    for col in ("method", "ref samples/s (rounds)", "step speed-up", "ref val s", "ref epoch s", "epoch speed-up",
                "ref trained"):
        as_run.add_column(col)
    for r in own:
        a = r["reference_own_process"]
        as_run.add_row(r["method"], f"{_f(a['samples_per_s'], 0)} ({' '.join(map(str, a['round_samples_per_s']))})",
                       f"{a['step_ratio']:.2f}×", _f(a["validation_s"]), _f(a["epoch_s"], 1),
                       f"{a['epoch_ratio']:.2f}×", _duration(a["trained_s"]))
    return [steps, epochs, as_run]


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
