"""Run specs from user input: the resolved config of a method, the dataset it names, and one spec per run.

``bench train``, ``bench run`` (grid expansion), ``bench tune`` and ``bench perf`` build their configs, datasets and
specs here, so a flag means the same thing in every command.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.config import applied_recipes, load_yaml, resolve
from bench.errors import ConfigError
from bench.method import DataInfo
from bench.protocols import TrainSet
from bench.records import RunSpec
from bench.package import CHECKOUT
from bench.registry import DATASETS, METHODS, PROTOCOLS, method_recipe


def flag_overrides(protocol: str | None = None, data_root: str | Path | None = None) -> dict[str, Any]:
    """The config keys that CLI flags set (``--protocol``, ``--data-root``); None leaves the config's value."""
    return {"protocol.name": protocol, "data.root": str(Path(data_root).resolve()) if data_root else None}


def protocol_recipe(method: str, protocol: str) -> list[Path]:
    """The protocol layers of ``method`` under ``protocol``, parents first: ``<name>.<protocol>.yaml`` beside its
    recipe, preceded by its parent's, following the recipe's ``extends`` to a method it derives from (NICE-SA and
    NICE-GA get ``nice.published.yaml``, then their own wiring layer; MCDB, which borrows NICE's training recipe
    without being a NICE, gets none). Empty when there is none. Like the recipe, the paths come from the registered
    modules' files and registered names only."""
    if protocol not in PROTOCOLS.names():  # an unknown name is the protocol.name rule's to report
        return []
    entry = METHODS.get(method)
    recipe = method_recipe(method)
    if recipe is None:
        return []
    layer = recipe.with_name(f"{method}.{protocol}.yaml")
    own = [layer] if layer.is_file() else []
    parent = load_yaml(recipe).get("extends") if recipe.is_file() else None
    if isinstance(parent, str) and parent in METHODS.names() and issubclass(entry.obj, METHODS.get(parent).obj):
        return [*protocol_recipe(parent, protocol), *own]
    return own


def check_protocol_recipe(method: str, cfg: dict) -> None:
    """A protocol that replays each paper's own procedure (``published``, ``published-inter``) needs the method to
    declare how its paper ran it; a method without that layer is refused before any data is read."""
    name = cfg["protocol"]["name"]
    honest = getattr(PROTOCOLS.get(name).obj, "honest_counterpart", None)
    if honest and not protocol_recipe(method, name):
        raise ConfigError(f"{method} declares no {name} protocol (no {method}.{name}.yaml beside its module); "
                          f"use --protocol {honest}")


def resolve_config(method: str, config_files=(), sets=(), overrides: dict[str, Any] | None = None) -> dict:
    """The resolved config of ``method``; ``overrides`` are dotted keys set by CLI flags (see :func:`flag_overrides`)."""
    entry = METHODS.get(method)
    # JSON is valid YAML, so flag values pass through the same --set parser (and its validation) as user input
    flag_sets = [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items() if v is not None]
    cfg = resolve(method, method_defaults=getattr(entry.obj, "defaults", {}), config_files=config_files,
                  sets=[*sets, *flag_sets], find_recipe=method_recipe, find_protocol_layer=protocol_recipe)
    check_protocol_recipe(method, cfg)
    return cfg


def recipe_record(method: str, cfg: dict) -> list[str]:
    """The recipe files layered into ``cfg`` (the run record's ``provenance.recipe``: the recipe and its ``extends``
    parents, the protocol layer, the synthetic recipe), relative to the repository (or the installed ``bench``
    package: ``baselines/nice.yaml`` either way), since records move between machines; a plugin's stay absolute."""
    repo = CHECKOUT or Path(__file__).resolve().parent  # installed: relative to the bench package
    paths = [Path(source).resolve() for source in applied_recipes(method, cfg, method_recipe, protocol_recipe)]
    return [str(p.relative_to(repo)) if p.is_relative_to(repo) else str(p) for p in paths]


def open_dataset(cfg: dict):
    """The dataset the config names, built through the DATASETS registry (no root: the built-in synthetic one)."""
    d = cfg["data"]
    options = dict(channels=d["channels"], tmin=d["tmin"], tmax=d["tmax"], features=d["features"],
                   prompt_template=d["prompt_template"], underscores_to_spaces=d["prompt_underscores_to_spaces"])
    if d["root"] is None:
        return DATASETS.create("synthetic-things-eeg", preset=d["synthetic_preset"], **options)
    return DATASETS.create("things-eeg", root=d["root"], **options)


def make_spec(method: str, cfg: dict, subject: int, seed: int, ds, variant: str | None = None) -> RunSpec:
    """One run; its data fingerprint covers the files of every subject the protocol reads for it."""
    protocol = cfg["protocol"]["name"]
    subjects = PROTOCOLS.get(protocol).obj.from_config(cfg).subjects_read(ds, int(subject))
    return RunSpec(method=method, config=cfg, protocol=protocol, subject=int(subject), seed=int(seed),
                   data_fingerprint=ds.fingerprint(subjects), variant=variant)


def data_info(ds, train: TrainSet) -> DataInfo:
    """What a method may build itself from: the dataset's shapes and the training targets' dimension."""
    return DataInfo(n_chans=ds.n_chans, n_times=ds.n_times, sfreq=float(ds.sfreq), ch_names=tuple(ds.ch_names),
                    feature_dim=int(train.image.shape[1]), n_subjects=len(ds.subjects),
                    n_train_concepts=len(ds.train_concepts), has_text=train.text is not None)
