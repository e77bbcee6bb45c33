"""Subject and seed lists as users type them: ``all``, ``1,2,5``, ``1-3,7``. One parser for every command."""
from __future__ import annotations

import re

from bench.errors import UserError


class IdListError(UserError, ValueError):
    """A list of subjects or seeds cannot be read; the message names the option."""


def parse_ids(text: str, what: str, available: list[int] | None = None) -> list[int]:
    """``"all"`` (needs ``available``), ``"1,2,5"`` or ranges ``"1-3,7"`` → sorted unique ints, checked against
    ``available`` when given; ``what`` names the option in messages (e.g. ``subjects`` for ``--subjects``)."""
    text = text.strip()
    if text == "all":
        if available is None:
            raise IdListError(f"--{what} all is not defined here")
        return list(available)
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise IdListError(f"--{what} {text!r}: expected 'all', '1,2,5' or '1-3', not {part!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise IdListError(f"--{what} {text!r}: empty range {part!r}")
        out.update(range(lo, hi + 1))
    if not out:
        raise IdListError(f"--{what} {text!r} names nothing")
    if available is not None and (missing := sorted(out - set(available))):
        raise IdListError(f"--{what}: {missing} not in the dataset (it has {available})")
    return sorted(out)


def parse_optional_ids(text: str | None, what: str) -> list[int] | None:
    """:func:`parse_ids` for an option that may be left out (None or empty → None)."""
    return parse_ids(text, what) if text and text.strip() else None
