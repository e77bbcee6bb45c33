"""Grid expansion for `bench run`: methods × subjects × seeds (× ablation variants) → run specs, checked before
anything runs; then :mod:`bench.ray_scheduler` runs them and :func:`print_summary` shows the leaderboard."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from bench.ablation import registered_declaration
from bench.errors import UserError
from bench.ray_scheduler import GridResult, RayOptions, run_grid
from bench.preflight import check_spec
from bench.records import RunSpec
from bench.registry import METHODS
from bench.ids import parse_ids
from bench.specs import flag_overrides, make_spec, open_dataset, resolve_config


class SweepError(UserError, ValueError):
    """A sweep request is malformed (subjects, seeds, methods)."""


def ablation_variants(method: str) -> list[tuple[str | None, dict]]:
    """The method's declared ablation variants (label → dotted overrides), then the full method (label None)."""
    declared = getattr(METHODS.get(method).obj, "ablations", None) or {}
    if not declared:
        raise SweepError(f"method {method!r} declares no ablation variants")
    return [*declared.items(), (None, {})]


@dataclass
class SweepRequest:
    methods: list[str]
    subjects: str = "all"
    seeds: str = "0"
    protocol: str | None = None
    data_root: str | Path | None = None
    results_dir: str | Path = "results"
    config_files: tuple = ()
    sets: tuple = ()
    ablation: bool = False
    force: bool = False
    retries: int = 0


def expand_specs(req: SweepRequest) -> tuple[list[RunSpec], object]:
    """Every run spec of the request (and the opened dataset, whose fingerprints the specs carry)."""
    overrides = flag_overrides(req.protocol, req.data_root)
    base_cfgs = {m: resolve_config(m, req.config_files, req.sets, overrides) for m in req.methods}
    data_keys = {json.dumps(c["data"], sort_keys=True) for c in base_cfgs.values()}
    if len(data_keys) > 1:
        raise SweepError("the methods of one `bench run` read the data differently (data.* keys differ); "
                         "run them separately")
    ds = open_dataset(next(iter(base_cfgs.values())))
    subjects = parse_ids(req.subjects, "subjects", ds.subjects)
    seeds = parse_ids(req.seeds, "seeds")
    specs = []
    for method in req.methods:
        variants = ablation_variants(method) if req.ablation else [(None, {})]
        # each run carries how its ablation table reads (not hashed): the leaderboard needs no method-specific order
        declared = registered_declaration(method) if req.ablation else None
        for label, variant_sets in variants:
            # the variant's switches come last so a user's --set cannot silently undo them
            cfg = base_cfgs[method] if not variant_sets else resolve_config(
                method, req.config_files, [*req.sets, *(f"{k}={json.dumps(v)}" for k, v in variant_sets.items())],
                overrides)
            for subject in subjects:
                for seed in seeds:
                    spec = make_spec(method, cfg, subject, seed, ds, variant=label)
                    specs.append(replace(spec, ablation=declared))
    for spec in specs:  # before Ray starts and any record is written: a run that cannot finish is refused now
        check_spec(spec, ds)
    return specs, ds


def run_sweep(req: SweepRequest, ray: RayOptions, printer: Callable[[str], None] = print) -> GridResult:
    specs, _ = expand_specs(req)
    printer(f"{len(specs)} run(s): {', '.join(req.methods)}{' with ablations' if req.ablation else ''}; "
            f"results in {Path(req.results_dir).resolve()}")
    return run_grid(specs, req.results_dir, ray, force=req.force, retries=req.retries, printer=printer)


def print_summary(result: GridResult, req: SweepRequest, console) -> None:
    """The leaderboard of the requested runs (with their ablation table), then what failed or was not run."""
    from bench.leaderboard import build_leaderboard, rich_tables

    console.print(f"{len(result.records)} run(s) in {Path(req.results_dir).resolve()}: {result.skipped} reused, "
                  f"{result.scheduled} scheduled, {result.wall_s:.0f} s")
    if result.records:
        board = build_leaderboard(result.records)
        for table in rich_tables(board, "main"):
            console.print(table)
        if req.ablation:
            for table in rich_tables(board, "ablation"):
                console.print(table)
    for rec in result.records:
        if rec.status != "completed":
            console.print(f"[red]failed[/red] {rec.spec.label}: {rec.error['type']}: {rec.error['message']}",
                          highlight=False)
    for label in result.busy:
        console.print(f"[yellow]not run[/yellow] {label}: held by another `bench run` on this results folder")
