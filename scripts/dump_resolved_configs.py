"""Print the resolved config of every built-in method, recipe and ablation variant, one JSON line each.

Run it on two checkouts and diff the outputs: run records hash their resolved config, so a refactor of the config
layers (recipes, defaults, ``extends``) must leave every line byte-identical.

    PYTHONPATH=. python scripts/dump_resolved_configs.py > after.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.registry import METHODS
from bench.runner import resolve_config

NAMED_RECIPES = {"mcdb": ["configs/recipes/mcdb-nice-paper.yaml"]}


def cases():
    for method in METHODS.names():
        yield method, (), ()
        yield method, (), ("protocol.name=inter",)
        for recipe in NAMED_RECIPES.get(method, []):
            yield method, (recipe,), ()
        for label, switches in (getattr(METHODS.get(method).obj, "ablations", None) or {}).items():
            sets = tuple(f"{k}={json.dumps(v)}" for k, v in switches.items())
            yield method, (), sets
            for recipe in NAMED_RECIPES.get(method, []):
                yield method, (recipe,), sets


def main() -> None:
    for method, files, sets in cases():
        cfg = resolve_config(method, [Path(f) for f in files], sets)
        # insertion order kept on purpose: a changed key order is a changed file a user reads
        sys.stdout.write(json.dumps({"method": method, "files": files, "sets": sets, "config": cfg}) + "\n")


if __name__ == "__main__":
    main()
