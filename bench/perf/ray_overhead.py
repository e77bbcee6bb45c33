"""Ray overhead: K identical short runs as a Ray Tune grid (:func:`bench.ray_scheduler.run_grid`) against the same runs
one after another in this process (:func:`bench.execute.run_spec`).

Each trial is a real run (load, train, validate, test, record) whose epoch count is calibrated to last about
``trial_s`` seconds. Overhead = (Ray wall − ideal) / ideal with ideal = serial wall / concurrency; reported with and
without Ray's own start-up, which a long sweep pays once.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.perf.cpu_budget import CPUBudget
from bench.ray_scheduler import REPORT_EVERY_S, RayOptions, init_ray, run_grid
from bench.records import COMPLETED, RunStore
from bench.execute import run_spec
from bench.specs import make_spec, open_dataset, resolve_config

METHOD = "nice"


@contextlib.contextmanager
def torch_threads(n: int):
    """Serial runs get the threads a Ray trial gets (``cpus_per_trial``), or the comparison is not like for like."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: the runs checkpoint about this often, as often as a trial reports to Tune. The tiny data's epochs last under a
#: second, and a 42 MB checkpoint after each (a quarter of a run's time) would have this section time two runs
#: writing to one disk instead of 30 s NICE trials, whose real epochs last 15-45 s.
CHECKPOINT_EVERY_S = REPORT_EVERY_S


def _sets(epochs: int, checkpoint_every: int) -> list[str]:
    return [f"train.epochs={epochs}", f"train.checkpoint_every={checkpoint_every}", "protocol.val_concepts=4",
            "train.batch_size=64"]


def _specs(root: Path, epochs: int, checkpoint_every: int, seeds: range):
    cfg = resolve_config(METHOD, sets=_sets(epochs, checkpoint_every), overrides={"data.root": str(root)})
    ds = open_dataset(cfg)
    return [make_spec(METHOD, cfg, 1, seed, ds) for seed in seeds], ds


def _serial(specs, ds, store: RunStore) -> float:
    t0 = time.perf_counter()
    for spec in specs:
        record = run_spec(spec, ds, store, force=True, progress=False).record
        if record.status != COMPLETED:
            raise RuntimeError(f"serial perf run {spec.label} failed: {record.error['message']}")
    return time.perf_counter() - t0


def _side_by_side(specs, root: Path, sets: list[str], scratch: Path, concurrency: int, threads: int) -> float:
    """The runs' summed training time as plain `bench train` processes, ``concurrency`` at a time and no Ray: what
    the machine itself gives runs side by side (shared memory bandwidth and caches), which no scheduler can beat."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # the serial runs' and each trial's thread count
    set_args = [arg for s in sets for arg in ("--set", s)]
    folder = scratch / "side-by-side"
    folder.mkdir(parents=True, exist_ok=True)

    def train(spec) -> None:
        with open(folder / f"seed-{spec.seed}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "bench", "train", "--method", METHOD, "--subject", str(spec.subject),
                            "--seed", str(spec.seed), "--data-root", str(root), "--results-dir", str(folder),
                            "--quiet", *set_args], env=env, stdout=log, stderr=subprocess.STDOUT)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(train, specs))
    records = RunStore(folder).records()
    if len(records) != len(specs) or any(r.status != COMPLETED for r in records):
        logs = "".join(p.read_text()[-1500:] for p in sorted(folder.glob("*.log")))
        raise RuntimeError(f"side-by-side perf runs did not all complete:\n{logs}")
    return sum(r.timings["train_s"] for r in records)


def calibrate_epochs(root: Path, trial_s: float, scratch: Path, threads: int) -> tuple[int, int]:
    """Epochs for a run of at least ``trial_s`` seconds and epochs between its checkpoints
    (:data:`CHECKPOINT_EVERY_S`), from a 3-epoch run after an unmeasured 1-epoch one.

    The first run in a process pays one-off costs (imports, allocator and kernel warm-up) that would otherwise be
    read as epoch time; the 1.1 margin covers the drift of a shared machine's load."""
    for epochs in (1, 3):
        specs, ds = _specs(root, epochs, 3, range(1))  # one checkpoint, the last epoch's
        store = RunStore(scratch / f"calibrate-{epochs}")
        with torch_threads(threads):
            wall = _serial(specs, ds, store)
    train_s = store.read(specs[0].spec_hash).timings["train_s"]
    per_epoch, fixed = max(train_s / 3, 1e-3), max(0.0, wall - train_s)
    return max(1, math.ceil(1.1 * (trial_s - fixed) / per_epoch)), max(1, math.ceil(CHECKPOINT_EVERY_S / per_epoch))


def measure_ray(root: Path, trials: int, trial_s: float, concurrency: int, scratch: Path,
                cpus_per_trial: float = 1.0) -> dict:
    import ray

    threads = max(1, int(cpus_per_trial))
    epochs, checkpoint_every = calibrate_epochs(root, trial_s, scratch, threads)
    specs, ds = _specs(root, epochs, checkpoint_every, range(trials))
    serial_store = RunStore(scratch / "serial")
    with torch_threads(threads):
        serial = _serial(specs, ds, serial_store)

    opts = RayOptions(cpus_per_trial=cpus_per_trial, max_concurrent=concurrency)
    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    init_ray(opts)
    t1 = time.perf_counter()
    try:
        with CPUBudget() as cpu:
            grid = run_grid(specs, scratch / "ray", opts, force=True, printer=lambda _msg: None)
    finally:
        t2 = time.perf_counter()
        if started_here:
            ray.shutdown()
    failed = [r.spec.label for r in grid.records if r.status != COMPLETED]
    if failed or len(grid.records) != trials:
        raise RuntimeError(f"Ray perf trials did not all complete: {failed or grid.busy}")
    ideal = serial / concurrency
    out = {"method": METHOD, "trials": trials, "concurrency": concurrency, "cpus_per_trial": cpus_per_trial,
           "epochs_per_trial": epochs, "checkpoint_every": checkpoint_every, "trial_s": serial / trials,
           "serial_s": serial, "ideal_s": ideal,
           "ray_init_s": t1 - t0, "ray_grid_s": t2 - t1, "ray_wall_s": t2 - t0,
           "overhead_pct": 100 * ((t2 - t0) - ideal) / ideal,
           "overhead_excl_init_pct": 100 * ((t2 - t1) - ideal) / ideal,
           **_breakdown([serial_store.read(s.spec_hash) for s in specs], grid.records, serial, t2 - t1, concurrency),
           **cpu.split({(r.provenance.get("node") or {}).get("pid") for r in grid.records})}
    side = (_side_by_side(specs, root, _sets(epochs, checkpoint_every), scratch, concurrency, threads)
            if concurrency > 1 else None)
    return {**out, **_against_machine(out, side)}


def _against_machine(out: dict, side_by_side_train_s: float | None) -> dict:
    """Ray against what the machine allows: the ideal with the runs' training time as measured side by side
    (:func:`_side_by_side`; at concurrency 1, serially), so that the overhead left is Ray's own."""
    side = out["serial_train_s"] if side_by_side_train_s is None else side_by_side_train_s
    ideal = (out["serial_s"] + side - out["serial_train_s"]) / out["concurrency"]
    return {"side_by_side_train_s": side, "side_by_side_slowdown_pct": 100 * (side / out["serial_train_s"] - 1),
            "machine_ideal_s": ideal, "overhead_vs_machine_pct": 100 * (out["ray_grid_s"] - ideal) / ideal}


def _breakdown(serial_runs, ray_runs, serial_s: float, grid_s: float, concurrency: int) -> dict:
    """Where the overhead goes: how much slower the runs trained in the grid than alone (trials sharing the cores,
    the driver and Ray's daemons taking turns on them: :class:`CPUBudget`), and the grid's time outside training
    against the serial runs' (worker start-up, imports, scheduling gaps; evaluation and records on both sides), per
    trial slot."""
    serial_train = sum(r.timings["train_s"] for r in serial_runs)
    ray_train = sum(r.timings["train_s"] for r in ray_runs)
    return {"serial_train_s": serial_train, "ray_train_s": ray_train,
            "train_slowdown_pct": 100 * (ray_train / serial_train - 1),
            "serial_outside_train_s": (serial_s - serial_train) / concurrency,
            "grid_outside_train_s": grid_s - ray_train / concurrency}
