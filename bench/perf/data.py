"""The data section: first conversion into the float16 cache, then cached open + load + average (the stored mean
removed before each run, so the repetitions are averaged again and stored), then cached open + load of the stored mean,
each in a fresh process (see :mod:`bench.perf.probe`). ``cache`` must be an empty scratch folder: the first probe
converts into it."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path


class ProbeError(RuntimeError):
    pass


def run_probe(root: Path, subject: int, part: str, cache: Path) -> dict:
    env = {**os.environ, "BENCH_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-m", "bench.perf.probe", str(root), str(subject), part],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise ProbeError(f"data probe ({part}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    """Median wall time (the shared machine adds noise in one direction) and the largest peak RSS."""
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "load_s": statistics.median(r["load_s"] for r in runs),
            "wall_s_runs": [round(r["wall_s"], 3) for r in runs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "import_rss_mb": max(r["import_rss_mb"] for r in runs), "shape": runs[0]["shape"]}


def _without_stored_means(cache: Path, probe):
    """``probe()`` with every stored mean removed first: the load averages the cached repetitions (and stores the
    mean again, which the timing includes)."""
    for means in (cache / "eeg").glob("*/means"):
        shutil.rmtree(means)
    return probe()


def measure_data(root: Path, subject: int, repeats: int, cache: Path) -> dict:
    if cache.exists() and any(cache.iterdir()):
        raise ValueError(f"{cache} is not empty: the first load would not be a first conversion")
    first = run_probe(root, subject, "train", cache)
    averaged = [_without_stored_means(cache, lambda: run_probe(root, subject, "train", cache)) for _ in range(repeats)]
    cached = [run_probe(root, subject, "train", cache) for _ in range(repeats)]
    test_first = run_probe(root, subject, "test", cache)
    test_cached = [run_probe(root, subject, "test", cache) for _ in range(repeats)]
    cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    source = sum(p.stat().st_size for p in (root / "Preprocessed_data_250Hz").rglob(f"sub-{subject:02d}/*.npy"))
    return {"subject": subject, "source_gb": source / 1e9, "cache_gb": cache_bytes / 1e9,
            "train_first": {"wall_s": first["wall_s"], "peak_rss_mb": first["peak_rss_mb"], "shape": first["shape"]},
            "train_averaged": _summary(averaged), "train_cached": _summary(cached),
            "test_first": {"wall_s": test_first["wall_s"], "peak_rss_mb": test_first["peak_rss_mb"],
                           "shape": test_first["shape"]},
            "test_cached": _summary(test_cached)}
