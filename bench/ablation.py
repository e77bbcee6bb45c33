"""A method's declared ablation as run records carry it: its variants in the order they add components, and the label
of its full row.

A method class declares ``ablations`` (label → dotted config overrides, in order) and may name its full row with
``ablation_full_label``. `bench run --ablation` copies the declaration into every spec it expands (``RunSpec.ablation``,
not hashed), so the leaderboard orders an ablation table from the records, even where the method is not installed.
"""
from __future__ import annotations

from bench.registry import METHODS, RegistryError

#: the full method's row, for a method that does not name it
FULL_LABEL = "full"


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

