"""The reference loop alone, in a fresh process on glibc's default allocator: the reference code as a user runs it.

``bench perf`` times ours and the reference in one process, where :mod:`bench.allocator` (which every run of ours
turns on) speeds up both. NICE's and ATM's scripts run in processes of their own with glibc's defaults, so the
speed-up a user sees is ours against this child's figure. ``python -m bench.perf.reference_child ROOT METHOD DEVICE
BATCH WARMUP STEPS ROUNDS`` prints one JSON line.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def measure_reference(root: Path, name: str, device: str, batch: int, warmup: int, steps: int, rounds: int) -> dict:
    import torch

    from bench import allocator
    from bench.data.dataset import ThingsEEG
    from bench.perf.reference import ReferenceLoop, reference_structure
    from bench.perf.throughput import VAL_ROWS, TrainingRows, build_method, trainer_config
    from bench.specs import resolve_config

    ds = ThingsEEG.open(root)
    rows = TrainingRows(ds, subject=1)
    cfg = resolve_config(name, overrides={"data.root": str(root)})
    average = bool(cfg["data"]["train_average"])
    probe = rows.sample(batch, average)
    method = build_method(name, cfg, ds, probe)
    reference_structure(method)
    ref = ReferenceLoop(method, rows.sample((warmup + rounds * steps) * batch, average),
                        trainer_config(cfg, batch, False), torch.device(device), batch)
    ref.run(warmup)
    times = [ref.run(steps) for _ in range(rounds)]
    val = rows.validation(probe, VAL_ROWS)
    return {"samples_per_s": steps * batch / statistics.median(times),
            "kept_freed_memory": allocator.is_on(),  # must stay False: glibc's defaults
            "round_samples_per_s": [round(steps * batch / t, 2) for t in times],
            "validation_s": statistics.median(ref.validate(val) for _ in range(max(2, rounds)))}


def reference_in_own_process(root: Path, name: str, device: str, batch: int, warmup: int, steps: int,
                             rounds: int) -> dict:
    # the loop calls no Trainer, so nothing turns the setting on; the opt-out keeps it so if that ever changes
    env = {**os.environ, "BENCH_KEEP_MALLOC_DEFAULTS": "1"}
    args = [str(a) for a in (root, name, device, batch, warmup, steps, rounds)]
    out = subprocess.run([sys.executable, "-m", "bench.perf.reference_child", *args], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f"reference loop in its own process ({name}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(measure_reference(Path(a[0]), a[1], a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]))))
