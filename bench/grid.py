"""Grid expansion for `bench run`: methods × subjects × seeds (× ablation variants) → run specs, checked before
anything runs; then :mod:`bench.ray_scheduler` runs them and :func:`print_summary` shows the leaderboard."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from bench.ablation import FROM_FULL, FULL_LABEL, dotted_get, registered_declaration, variant_sets
from bench.errors import UserError
from bench.ray_scheduler import GridResult, RayOptions, run_grid
from bench.sweep_accounting import BUSY, DONE, FAILED, REUSED
from bench.preflight import check_spec
from bench.records import RunSpec
from bench.registry import METHODS
from bench.ids import parse_ids
from bench.specs import flag_overrides, make_spec, open_dataset, resolve_config


class SweepError(UserError, ValueError):
    """A sweep request is malformed (subjects, seeds, methods)."""


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
    wait: bool = False  # wait for specs another live `bench run` holds, then reuse (or compute) them


def ablation_variants(method: str) -> list[tuple[str | None, dict]]:
    """The method's declared ablation variants (label → dotted overrides), then the full method (label None)."""
    declared = getattr(METHODS.get(method).obj, "ablations", None) or {}
    if not declared:
        raise SweepError(f"method {method!r} declares no ablation variants")
    return [*declared.items(), (None, {})]


def _collapse_cause(upper: dict, lower: dict, full_cfg: dict, sets) -> str:
    """What made two adjacent rows equal: the user's --set items on the keys the rows' declarations disagree on."""
    keys = sorted(k for k in {*upper, *lower} if upper.get(k, FROM_FULL) != lower.get(k, FROM_FULL))
    named = [f"--set {s}" for s in sets if s.split("=", 1)[0].strip() in keys]
    return ", ".join(named) or ", ".join(f"{k}={json.dumps(dotted_get(full_cfg, k))} (from a --config file or "
                                         f"recipe)" for k in keys)


def ablation_configs(method: str, req: SweepRequest, overrides: dict, full_cfg: dict
                     ) -> list[tuple[str | None, dict]]:
    """(label, resolved config) of each ablation row, the full one (label None) last.

    A row equal to the row above it would run the same model under two labels; it is refused before anything runs,
    naming the override that collapsed them.
    """
    rows = []
    for label, switches in ablation_variants(method):
        # the variant's switches come last so a user's --set cannot silently undo them
        cfg = full_cfg if label is None else resolve_config(
            method, req.config_files, [*req.sets, *variant_sets(switches, full_cfg)], overrides)
        if rows and cfg == rows[-1][2]:
            above, full_label = rows[-1], (registered_declaration(method) or {}).get("full_label", FULL_LABEL)
            cause = _collapse_cause(above[1], switches, full_cfg, req.sets)
            raise SweepError(f"{method}: {cause} makes {label or full_label} identical to {above[0]}; an ablation row "
                             f"must add a component the row above lacks (drop the override or run without --ablation)")
        rows.append((label, switches, cfg))
    return [(label, cfg) for label, _, cfg in rows]


def expand_specs(req: SweepRequest) -> tuple[list[RunSpec], object]:
    """Every run spec of the request (and the opened dataset, whose fingerprints the specs carry)."""
    overrides = flag_overrides(req.protocol, req.data_root)
    base_cfgs = {m: resolve_config(m, req.config_files, req.sets, overrides) for m in req.methods}
    data_keys = {json.dumps(c["data"], sort_keys=True) for c in base_cfgs.values()}
    if len(data_keys) > 1:
        raise SweepError("the methods of one `bench run` read the data differently (data.* keys differ); "
                         "run them separately")
    # the ablation rows are resolved (and a collapsed one refused) before the data is opened or generated
    rows = {m: ablation_configs(m, req, overrides, base_cfgs[m]) if req.ablation else [(None, base_cfgs[m])]
            for m in req.methods}
    ds = open_dataset(next(iter(base_cfgs.values())))
    subjects = parse_ids(req.subjects, "subjects", ds.subjects)
    seeds = parse_ids(req.seeds, "seeds")
    specs = []
    for method in req.methods:
        # each run carries how its ablation table reads (not hashed): the leaderboard needs no method-specific order
        declared = registered_declaration(method) if req.ablation else None
        for label, cfg in rows[method]:
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
    return run_grid(specs, req.results_dir, ray, force=req.force, retries=req.retries, printer=printer, wait=req.wait)


def print_summary(result: GridResult, req: SweepRequest, console) -> None:
    """Counts (done / reused / failed / busy), the leaderboard of the requested runs (with their ablation table),
    then why each failed run failed and who holds each busy one."""
    from rich.markup import escape  # labels such as mcdb[+text] are not markup

    from bench.leaderboard import build_leaderboard, rich_tables

    counts = {kind: len(result.of_kind(kind)) for kind in (DONE, REUSED, FAILED, BUSY)}
    console.print(f"{len(result.outcomes)} run(s) in {Path(req.results_dir).resolve()}: {counts[DONE]} done, "
                  f"{counts[REUSED]} reused, {counts[FAILED]} failed, {counts[BUSY]} busy "
                  f"({result.scheduled} trial(s) scheduled, {result.wall_s:.0f} s)", highlight=False)
    if result.records:
        board = build_leaderboard(result.records)
        for table in rich_tables(board, "main"):
            console.print(table)
        for table in rich_tables(board, "inflation"):  # only when a published protocol ran: honest vs as-published
            console.print(table)
        if req.ablation:
            for table in rich_tables(board, "ablation"):
                console.print(table)
    runs = Path(req.results_dir).resolve() / "runs"
    for label, reason in result.of_kind(FAILED):
        console.print(f"[red]failed[/red] {escape(label)}: {escape(reason)}", highlight=False)
    for label, reason in result.of_kind(BUSY):
        console.print(f"[yellow]busy[/yellow] {escape(label)}: {escape(reason)} (lock in {runs / '.locks'}); not a "
                      f"failure: `bench run --wait` waits for it", highlight=False)
    if counts[FAILED]:
        console.print(f"the failed runs' records (error, traceback, log tail) are in {runs}", highlight=False)
