"""A method's declared ablation as run records carry it: its variants in the order they add components, and the label
of its full row.

A method class declares ``ablations`` (label → dotted config overrides, in order) and may name its full row with
``ablation_full_label``. `bench run --ablation` copies the declaration into every spec it expands (``RunSpec.ablation``,
not hashed), so the leaderboard orders an ablation table from the records, even where the method is not installed.

A variant pins the component it adds with the value :data:`FROM_FULL` (the full row's resolved value of that key):
`+adapter` then has exactly the full method's adapter kind, whatever ``--set`` chose, and when the user's full method
lacks the component the two rows come out identical, which `bench run --ablation` refuses (:func:`bench.grid
.ablation_configs`) instead of running the same model twice under two labels.
"""
from __future__ import annotations

import json

from bench.registry import METHODS, RegistryError

#: the full method's row, for a method that does not name it
FULL_LABEL = "full"

#: an override value meaning "the full row's resolved value of this key"; a string, so declarations stay plain data
FROM_FULL = "<full>"


def dotted_get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def variant_sets(switches: dict, full_cfg: dict) -> list[str]:
    """A variant's overrides as ``--set`` items, each :data:`FROM_FULL` replaced by the full row's value."""
    return [f"{k}={json.dumps(dotted_get(full_cfg, k) if v == FROM_FULL else v)}" for k, v in switches.items()]


def declaration(method_cls) -> dict | None:
    """``{"order": [labels…], "full_label": …}`` of a method class; None when it declares no ablation variants."""
    declared = getattr(method_cls, "ablations", None) or {}
    if not declared:
        return None
    return {"order": list(declared), "full_label": str(getattr(method_cls, "ablation_full_label", FULL_LABEL))}


def registered_declaration(method: str) -> dict | None:
    """The declaration of a registered method; None for one this installation does not know (a plugin not loaded)."""
    try:
        entry = METHODS.get(method)
    except RegistryError:
        return None
    return declaration(entry.obj)

