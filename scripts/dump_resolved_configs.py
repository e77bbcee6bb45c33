"""Print the resolved config of every built-in method, named recipe and ablation variant, one JSON line each.

Run it on two checkouts and diff the outputs: run records hash their resolved config, so a refactor of the config
layers (recipes, defaults, ``extends``) must leave every line byte-identical. ``tests/golden/resolved_configs.jsonl``
holds its output; ``tests/test_config_recipes.py`` compares against it.

    PYTHONPATH=. python scripts/dump_resolved_configs.py > after.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

from bench.ablation import variant_sets
from bench.registry import METHODS
from bench.execute import resolve_config
from bench.specs import protocol_recipe

NAMED_RECIPES = {"mcdb": ["configs/recipes/mcdb-nice-paper.yaml"]}
#: a real data root (never opened here): a method's recipe may differ on it from the synthetic dataset's (issue 16)
REAL_ROOT = 'data.root="/data/things-eeg"'
#: protocols that replay published procedures: a method is resolved under each one it declares a layer for
PUBLISHED = ("published", "published-inter")


def builtin_methods() -> list[str]:
    prefixes = tuple(f"{package}." for package in METHODS.builtin_packages)
    return [n for n in METHODS.names() if METHODS.get(n).obj.__module__.startswith(prefixes)]


def cases(methods: list[str], root: Path = Path(".")) -> Iterator[tuple[str, tuple, tuple]]:
    """(method, config files, --set items): each method alone, under LOSO, on a real data root, under each published
    protocol it declares (issue 17), with its named recipes and ablations."""
    for method in methods:
        yield method, (), ()
        yield method, (), ("protocol.name=inter",)
        yield method, (), (REAL_ROOT,)
        for protocol in PUBLISHED:
            if protocol_recipe(method, protocol):
                yield method, (), (f"protocol.name={protocol}",)
        for recipe in NAMED_RECIPES.get(method, []):
            yield method, (recipe,), ()
        for switches in (getattr(METHODS.get(method).obj, "ablations", None) or {}).values():
            for files in ((), *((recipe,) for recipe in NAMED_RECIPES.get(method, []))):
                # a variant's FROM_FULL pins take the full row's values, as `bench run --ablation` does
                yield method, files, tuple(variant_sets(switches, resolve_config(method, [root / f for f in files])))


def lines(root: Path = Path(".")) -> Iterator[str]:
    for method, files, sets in cases(builtin_methods(), root):
        cfg = resolve_config(method, [root / f for f in files], sets)
        # insertion order kept on purpose: a changed key order is a changed file a user reads
        yield json.dumps({"method": method, "files": files, "sets": sets, "config": cfg})


def main() -> None:
    for line in lines():
        sys.stdout.write(line + "\n")


if __name__ == "__main__":
    main()
