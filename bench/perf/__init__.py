"""`bench perf`: data, GEMM peak, training, evaluation and Ray figures on one synthetic subject at a preset's scale.

:func:`run_perf` writes one subject of the preset (or uses ``data_root``) and a float16 cache into a scratch folder,
measures each section, removes the scratch folder and returns the report (see :mod:`bench.perf.report`).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.errors import UserError


class PerfError(UserError, ValueError):
    """A perf request that cannot run here (no CUDA, unknown preset or method)."""


@dataclass(frozen=True)
class Profile:
    """Sizes per preset: ``tiny`` is a smoke test, ``full`` gives the figures in docs/performance.md. ``full`` measures few steps
    because a reference step of batch 1000 takes ~10 s on a small CPU; on a GPU pass ``--steps 20`` or more. Its two
    warm-up steps: glibc's heap (:mod:`bench.allocator`) grows to a NICE step's high-water mark over the first steps,
    and with one warm-up step the first measured round ran at a third of the second's rate (492 against 1,559
    samples/s on the AVX-512 VM), halving the reported speed."""

    batch_size: int
    warmup_steps: int
    steps: int
    rounds: int
    load_repeats: int
    ray_trials: int
    ray_trial_s: float
    peak_s: float  # seconds of GEMMs per timing of the peak (best of 3)


PROFILES = {
    "tiny": Profile(batch_size=16, warmup_steps=1, steps=1, rounds=2, load_repeats=2, ray_trials=2, ray_trial_s=1.0,
                    peak_s=0.1),
    "full": Profile(batch_size=1000, warmup_steps=2, steps=4, rounds=2, load_repeats=3, ray_trials=4, ray_trial_s=30.0,
                    peak_s=1.0),
}
DEFAULT_METHODS = ("nice", "atm", "mcdb")


@dataclass
class PerfOptions:
    preset: str = "tiny"
    methods: list[str] = field(default_factory=list)  # empty: those of DEFAULT_METHODS that are registered
    device: str | None = None                          # cpu | cuda; None: cuda when available
    data_root: Path | None = None                      # a data root of the preset's shapes; None: generate one
    workdir: Path | None = None                        # scratch parent folder; None: the system's temp folder
    batch_size: int | None = None
    steps: int | None = None
    rounds: int | None = None
    warmup_steps: int | None = None
    compile: bool = False
    ray_trials: int | None = None
    ray_trial_s: float | None = None
    ray_concurrency: int = 1
    skip: tuple[str, ...] = ()                         # sections to leave out: data, train, ray


@contextlib.contextmanager
def _env(key: str, value: str):
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def resolve_device(requested: str | None):
    import torch

    if requested not in (None, "cpu", "cuda"):
        raise PerfError(f"--device must be cpu or cuda, not {requested!r}")
    if requested == "cpu":
        # the Trainer takes a GPU whenever torch sees one: hiding it before CUDA's first use (here, for this process
        # and the Ray workers it starts) is how the CPU path gets measured on a GPU machine
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if torch.cuda.is_available():
            raise PerfError("--device cpu: CUDA was initialised before bench perf could hide it; set "
                            "CUDA_VISIBLE_DEVICES= in the environment instead")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise PerfError(f"--device cuda: CUDA is not available here (torch {torch.__version__}, built for CUDA "
                        f"{torch.version.cuda or 'none'}); run with --device cpu")
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def resolve_methods(requested: list[str]) -> list[str]:
    from bench.registry import METHODS

    for name in requested:
        if METHODS.get(name).obj.closed_form:  # unknown names fail here, with the registry's suggestion
            raise PerfError(f"{name} is fitted in closed form: it has no training steps to measure")
    return list(requested) or [m for m in DEFAULT_METHODS if m in METHODS.names()]


def run_perf(opts: PerfOptions, say=print) -> dict:
    if opts.preset not in PROFILES:
        raise PerfError(f"--preset must be one of {', '.join(PROFILES)}, not {opts.preset!r}")
    unknown = set(opts.skip) - {"data", "train", "ray"}
    if unknown:
        raise PerfError(f"--skip takes data, train, ray; not {', '.join(sorted(unknown))}")
    device = resolve_device(opts.device)
    methods = resolve_methods(opts.methods)
    profile = PROFILES[opts.preset]
    from bench.perf.machine import describe_machine, load_average

    report: dict = {"preset": opts.preset, "machine": describe_machine(device), "options": _jsonable(opts)}
    t_start = time.perf_counter()
    if opts.workdir is not None:
        Path(opts.workdir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-perf-", dir=opts.workdir))
    try:
        with _env("BENCH_CACHE_DIR", str(scratch / "cache")):
            root = opts.data_root
            # only the data and training sections read the preset's subject; the Ray section writes its own tiny data
            if root is None and not {"data", "train"} <= set(opts.skip):
                root = _generate(scratch / "data", opts.preset, report, say)
            sections = report["section_s"] = {}
            if "data" not in opts.skip:
                from bench.perf.data import measure_data

                say("data: first conversion, then cached loads in fresh processes")
                t0 = time.perf_counter()
                report["data"] = measure_data(Path(root), 1, profile.load_repeats, scratch / "cache")
                sections["data"] = time.perf_counter() - t0
            if "train" not in opts.skip:
                from bench.allocator import keep_freed_memory
                from bench.perf.throughput import against_best_peak

                # as in every run (bench.train); on for the reference loop too, which in its own process would
                # run on glibc's defaults and be slower: the ratio errs in the reference's favour
                report["malloc_keeps_freed_memory"] = keep_freed_memory()
                t0 = time.perf_counter()
                report["peak"] = _peak(device, profile.peak_s, say)
                report["training"] = _training(Path(root), methods, device, profile, opts, report["peak"], say,
                                               kept_memory=report["malloc_keeps_freed_memory"])
                report["peak"] = _best_peak(report["peak"], _peak(device, profile.peak_s, say, "again, after training"))
                against_best_peak(report["training"], report["peak"])
                sections["training"] = time.perf_counter() - t0
            if "ray" not in opts.skip:
                t0 = time.perf_counter()
                report["ray"] = _ray(None if root is None else Path(root), scratch, profile, opts, say)
                sections["ray"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["machine"]["load_average_end"] = load_average()
    report["total_s"] = time.perf_counter() - t_start
    return report


def _jsonable(opts: PerfOptions) -> dict:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(opts).items()}


def _generate(out: Path, preset: str, report: dict, say) -> Path:
    from bench.data.synthetic import generate

    say(f"writing one subject of the {preset} synthetic preset to {out}")
    t0 = time.perf_counter()
    generate(out, preset=preset, seed=0, n_subjects=1)
    report["generate_s"] = time.perf_counter() - t0
    return out


def _peak(device, min_s: float, say, when: str = "") -> dict:
    from bench.perf.peak import GEMM_N, machine_peaks

    say(f"peak{' ' + when if when else ''}: {GEMM_N}×{GEMM_N} GEMM, float32 and (where the {device.type} has it) "
        f"bfloat16")
    return {"gemm_n": GEMM_N, **machine_peaks(device, min_s)}


def _best_peak(before: dict, after: dict) -> dict:
    """The higher of the two timings per precision (other tenants only ever slow a GEMM down), with both kept."""
    best = {key: max(before[key], after[key]) if before[key] and after[key] else before[key] or after[key]
            for key in ("float32", "bfloat16")}
    return {**before, **best, "float32_timings": [before["float32"], after["float32"]]}


def _training(root: Path, methods: list[str], device, profile: Profile, opts: PerfOptions, peaks: dict,
              say, kept_memory: bool) -> list[dict]:
    """``kept_memory``: this process runs on :mod:`bench.allocator`'s setting, so the reference is timed once more
    in a process of its own, on glibc's defaults, as its code runs (:mod:`bench.perf.reference_child`)."""
    from bench.data.dataset import ThingsEEG
    from bench.perf.reference_child import reference_in_own_process
    from bench.perf.throughput import TrainingRows, measure_method
    from bench.specs import resolve_config

    ds = ThingsEEG.open(root)
    rows = TrainingRows(ds, subject=1)
    batch = opts.batch_size or profile.batch_size
    steps, warmup = opts.steps or profile.steps, opts.warmup_steps or profile.warmup_steps
    rounds = opts.rounds or profile.rounds
    out = []
    for name in methods:
        say(f"training: {name}, {warmup} warm-up step(s), then {rounds} rounds of {steps} steps of {batch}, ours and "
            f"the reference alternating")
        cfg = resolve_config(name, overrides={"data.root": str(root)})
        out.append(measure_method(name, cfg, ds, rows, device, batch, warmup, steps, rounds, opts.compile, peaks))
        if kept_memory:
            say(f"training: {name}, the reference loop again in a process of its own (glibc's default allocator)")
            own = reference_in_own_process(root, name, str(device), batch, warmup, steps, rounds)
            out[-1]["reference_own_process"] = as_run(out[-1], own)
    return out


def as_run(measured: dict, own: dict) -> dict:
    """The reference's step and epoch as it runs in its own process, and ours against them (what a user gains)."""
    rate, ours = own["samples_per_s"], measured["ours"]
    batch = measured["batch_size"]
    epoch_s = math.ceil(measured["epoch_rows"] / batch) * batch / rate + own["validation_s"]
    return {**own, "epoch_s": epoch_s, "trained_s": measured["epochs"] * epoch_s,
            "step_ratio": ours["samples_per_s"] / rate, "epoch_ratio": epoch_s / ours["epoch_s"]}


def _ray(root: Path | None, scratch: Path, profile: Profile, opts: PerfOptions, say) -> dict:
    from bench.perf.ray_overhead import measure_ray

    reusable = root is not None and opts.preset == "tiny"
    ray_root = root if reusable else _generate(scratch / "ray-data", "tiny", {}, say)
    trials, trial_s = opts.ray_trials or profile.ray_trials, opts.ray_trial_s or profile.ray_trial_s
    say(f"ray: {trials} runs of ~{trial_s:g} s, serially, as a Ray Tune grid (concurrency {opts.ray_concurrency}) "
        "and, above concurrency 1, as plain processes side by side")
    return {**measure_ray(ray_root, trials, trial_s, opts.ray_concurrency, scratch / "ray-runs"), "data": "tiny"}
