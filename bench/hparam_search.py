"""`bench tune`: hyper-parameter search on **validation** top-1 only, with Ray Tune.

A search space is a YAML file of dotted config keys and distributions::

    train.lr: {loguniform: [1.0e-4, 1.0e-2]}
    train.batch_size: {choice: [256, 512]}
    method.mcdb_alpha: {grid: [0.1, 0.5, 1.0]}      # grid: every value, in every sample
    train.weight_decay: {uniform: [0.0, 0.05]}
    train.epochs: {randint: [10, 40]}                # upper bound exclusive

Each trial trains one model per listed subject, epoch by epoch in lockstep, and reports the mean validation top-1
(held-out training concepts) after every epoch, so ASHA can stop weak trials early. The test partition of every
split stays sealed: no test metric exists for the scheduler to see. The best configuration is written as a fully
resolved YAML that `bench run --config FILE` takes.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.config import check_key, load_yaml
from bench.errors import UserError
from bench.ray_scheduler import RayOptions, check_resources, init_ray
from bench.io import atomic_write_text

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")


class TuneError(UserError, ValueError):
    """A search space or tune request is invalid."""


def load_search_space(path: str | Path, resolved: dict) -> dict[str, Any]:
    """Dotted key → Ray Tune domain. Every key must exist in ``resolved`` (the method's resolved config)."""
    from ray import tune

    raw = load_yaml(path)
    if not raw:
        raise TuneError(f"search space {path} is empty")
    space = {}
    for key, spec in raw.items():
        check_key(resolved, key, str(path))
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise TuneError(f"{path}: {key} must be one of {{{': [...], '.join(DISTRIBUTIONS)}: [...]}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise TuneError(f"{path}: {key}.{kind} needs a non-empty list")
        if kind in ("loguniform", "uniform", "randint"):
            if len(args) != 2:
                raise TuneError(f"{path}: {key}.{kind} needs [low, high]")
            lo, hi = (float(a) for a in args)
            space[key] = (tune.loguniform(lo, hi) if kind == "loguniform" else tune.uniform(lo, hi)
                          if kind == "uniform" else tune.randint(int(lo), int(hi)))
        else:
            space[key] = tune.choice(args) if kind == "choice" else tune.grid_search(args)
    return space


def overrides_to_sets(overrides: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v.item() if isinstance(v, np.generic) else v)}" for k, v in overrides.items()]


def tune_trial(config: dict) -> None:
    """One search point: train every listed subject in lockstep and report mean validation top-1 per epoch."""
    from bench import seal
    from bench.ray_scheduler import load_plugins
    from bench.specs import make_spec, open_dataset, resolve_config

    load_plugins(config)
    if config.get("threads"):
        import torch

        torch.set_num_threads(max(1, int(config["threads"])))
    sets = [*config["sets"], *overrides_to_sets(config["overrides"])]
    cfg = resolve_config(config["method"], config["config_files"], sets, config["flag_overrides"])
    ds = open_dataset(cfg)
    specs = [make_spec(config["method"], cfg, subject, config["seed"], ds) for subject in config["subjects"]]
    with seal.sealed(f"bench tune is training {config['method']}"):  # tune never reads the test partition
        _train_in_lockstep(specs, ds)


def _train_in_lockstep(specs: list, ds) -> None:
    """Advance every subject's run one epoch at a time; report the mean validation top-1 after each epoch."""
    from ray import tune

    from bench.execute import prepare_run
    from bench.train import Trainer

    runs = []
    for spec in specs:
        run = prepare_run(spec, ds)  # the same split, seeding and method building as `bench run`
        trainer = Trainer(spec.config["train"], spec.seed, run.evaluator, progress=False)
        runs.append({"split": run.split, "epochs": trainer.epochs(run.method, run.split.train, run.split.val),
                     "last": math.nan, "best": -math.inf})
    epoch = 0
    while True:
        advanced = False
        for run in runs:
            entry = next(run["epochs"], None)
            if entry is not None:
                advanced = True
                if entry.get("val_top1") is not None:
                    run["last"], run["best"] = entry["val_top1"], max(run["best"], entry["val_top1"])
        if not advanced:
            break
        epoch += 1
        tune.report({"val_top1": float(np.nanmean([r["last"] for r in runs])),
                     "val_top1_best": float(np.mean([r["best"] for r in runs])), "epoch": epoch,
                     "test_opened": any(r["split"].test.opened for r in runs)})


@dataclass
class TuneRequest:
    method: str
    search: str | Path
    num_samples: int = 8
    scheduler: str = "fifo"        # fifo | asha
    subjects: str = "1"
    seed: int = 0
    protocol: str | None = None
    data_root: str | Path | None = None
    results_dir: str | Path = "results"
    config_files: tuple = ()
    sets: tuple = ()
    out: str | Path | None = None


@dataclass
class TuneOutcome:
    best_overrides: dict
    best_val_top1: float
    config_path: Path
    trials: list[dict]  # one dict per trial: its overrides and the metrics the scheduler saw


def scored_trials(grid, printer) -> list[dict]:
    """The trials of a finished search that reported a validation score (the others are named and left out)."""
    trials = []
    for result in grid:
        if result.error:
            printer(f"trial failed: {result.error}")
            continue
        history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        if not any("val_top1" in h for h in history):
            printer(f"trial with {result.config['overrides']} reported no validation score")
            continue
        trials.append({"overrides": result.config["overrides"], "metrics": dict(result.metrics or {}),
                       "history": history})
    return trials


def run_tune(req: TuneRequest, ray: RayOptions, printer=print) -> TuneOutcome:
    from ray import tune

    from bench.ids import parse_ids
    from bench.progress import tune_verbosity
    from bench.registry import loaded_plugins
    from bench.specs import flag_overrides, open_dataset, resolve_config

    flags = flag_overrides(req.protocol, req.data_root)
    resolved = resolve_config(req.method, req.config_files, req.sets, flags)
    if resolved["protocol"].get("validation", "concepts") in ("none", "test", "test-other-subjects"):
        raise TuneError(f"bench tune searches on a validation set that is not the test: protocol.validation="
                        f"{resolved['protocol']['validation']} ({resolved['protocol']['name']}) has none; tune under "
                        f"intra or inter")
    space = load_search_space(req.search, resolved)
    subjects = parse_ids(req.subjects, "subjects", open_dataset(resolved).subjects)
    if req.scheduler not in ("fifo", "asha"):
        raise TuneError(f"--scheduler must be fifo or asha, not {req.scheduler!r}")
    results_dir = Path(req.results_dir).resolve()
    init_ray(ray)
    check_resources(ray)
    scheduler = None
    if req.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(time_attr="training_iteration",
                                                  max_t=int(resolved["train"]["epochs"]), grace_period=1)
    base = {"method": req.method, "config_files": [str(Path(f).resolve()) for f in req.config_files],
            "sets": list(req.sets), "flag_overrides": flags, "subjects": subjects, "seed": req.seed,
            "threads": ray.cpus_per_trial, "plugins": loaded_plugins()}
    tuner = tune.Tuner(
        tune.with_resources(tune_trial, {"cpu": ray.cpus_per_trial, "gpu": ray.gpus_per_trial}),
        param_space={**base, "overrides": space},
        tune_config=tune.TuneConfig(metric="val_top1", mode="max", num_samples=req.num_samples, scheduler=scheduler,
                                    max_concurrent_trials=ray.max_concurrent),
        run_config=tune.RunConfig(name=f"tune-{req.method}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str(results_dir / "ray"), verbose=tune_verbosity(ray.verbose)),
    )
    trials = scored_trials(tuner.fit(), printer)
    if not trials:
        raise TuneError("no trial reported a validation score; see the messages above")
    best = max(trials, key=lambda t: max(h["val_top1"] for h in t["history"]))
    best_val = max(h["val_top1"] for h in best["history"])
    best_cfg = resolve_config(req.method, req.config_files, [*req.sets, *overrides_to_sets(best["overrides"])],
                              flags)
    out = Path(req.out) if req.out else results_dir / "tune" / f"{req.method}-best.yaml"
    header = (f"# bench tune --method {req.method} --search {req.search}: best of {len(trials)} trial(s) by mean "
              f"validation top-1 {best_val:.2f}% over subjects {subjects} ({dt.date.today()})\n"
              f"# searched: {json.dumps(best['overrides'], default=str)}\n"
              f"# use with: bench run --method {req.method} --config {out}\n")
    atomic_write_text(out, header + yaml.safe_dump(best_cfg, sort_keys=False))
    return TuneOutcome(best_overrides=best["overrides"], best_val_top1=best_val, config_path=out, trials=trials)
