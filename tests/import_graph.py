"""The import graph of a package tree, read from its source with `ast` (nothing is imported), and its cycles.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING``, relative or absolute. A function-level
import hides a cycle from Python at import time, not from a reader, so it is an edge like any other. Importing a
submodule also runs its parent packages' ``__init__``; those implicit edges are left out, or every package whose
``__init__`` re-exports a submodule would be a cycle by construction.

    edges = import_graph(Path("bench"), "bench")
    assert find_cycle(edges) is None
"""
from __future__ import annotations

import ast
from pathlib import Path


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name → file of every module under ``root`` (the directory of ``package``); a package is its __init__."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((package, *parts))] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement may bind: ``pkg.sub`` for each name of ``from pkg import sub``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the module's own package, one level up per extra dot
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in (``pkg.mod.func`` → ``pkg.mod``)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of the same tree it imports, anywhere in its source (self-imports left out)."""
    return trees_graph([(root, package)])


def trees_graph(trees: list[tuple[Path, str]]) -> dict[str, set[str]]:
    """:func:`import_graph` over several packages at once, so imports between them are edges too."""
    known = {name: path for root, package in trees for name, path in module_names(root, package).items()}
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            names = _imported(node, module, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom) and names:
                # `from pkg import sub` imports pkg.sub when that is a module, else a name of pkg itself
                hits = {n for n in names[:-1] if n in known}
                targets |= hits if len(hits) == len(names) - 1 else hits | {_resolve(names[-1], known)}
            else:
                targets |= {_resolve(n, known) for n in names}
        edges[module] = targets - {None, module}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None
