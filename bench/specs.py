"""Run specs from user input: the resolved config of a method, the dataset it names, and one spec per run.

``bench train``, ``bench run`` (grid expansion), ``bench tune`` and ``bench perf`` build their configs, datasets and
specs here, so a flag means the same thing in every command.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.config import applied_recipes, resolve
from bench.method import DataInfo
from bench.protocols import TrainSet
from bench.records import RunSpec
from bench.registry import DATASETS, METHODS, PROTOCOLS, method_recipe


def flag_overrides(protocol: str | None = None, data_root: str | Path | None = None) -> dict[str, Any]:
    """The config keys that CLI flags set (``--protocol``, ``--data-root``); None leaves the config's value."""
    return {"protocol.name": protocol, "data.root": str(Path(data_root).resolve()) if data_root else None}


def resolve_config(method: str, config_files=(), sets=(), overrides: dict[str, Any] | None = None) -> dict:
    """The resolved config of ``method``; ``overrides`` are dotted keys set by CLI flags (see :func:`flag_overrides`)."""
    entry = METHODS.get(method)
    # JSON is valid YAML, so flag values pass through the same --set parser (and its validation) as user input
    flag_sets = [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items() if v is not None]
    return resolve(method, method_defaults=getattr(entry.obj, "defaults", {}), config_files=config_files,
                   sets=[*sets, *flag_sets], find_recipe=method_recipe)


def recipe_record(method: str, cfg: dict) -> list[str]:
    """The recipe files layered into ``cfg`` (the run record's ``provenance.recipe``), relative to the repository
    when inside it, since records move between machines; a plugin's stay absolute."""
    repo = Path(__file__).resolve().parents[1]
    paths = [Path(source).resolve() for source in applied_recipes(method, cfg, method_recipe)]
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
