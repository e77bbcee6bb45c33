"""The shape of the code base: no import cycle anywhere, and no function longer than a screen (60 lines)."""
from __future__ import annotations

import ast
from pathlib import Path

from import_graph import find_cycle, trees_graph

ROOT = Path(__file__).resolve().parent.parent
# folder at the top of the repository → its import name (baselines/ and methods/ install as bench.baselines, bench.methods)
PACKAGES = {"bench": "bench", "baselines": "bench.baselines", "methods": "bench.methods"}
MAX_FUNCTION_LINES = 60


def test_no_import_cycle_across_bench_baselines_and_methods():
    edges = trees_graph([(ROOT / folder, name) for folder, name in PACKAGES.items()])
    assert len(edges) > 50  # the walk really saw the tree
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def function_lengths() -> list[tuple[int, str]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((node.end_lineno - node.lineno + 1,
                                f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def test_every_function_fits_on_a_screen():
    lengths = function_lengths()
    assert len(lengths) > 300
    too_long = [f"{where} ({n} lines)" for n, where in lengths if n > MAX_FUNCTION_LINES]
    assert not too_long, "functions over 60 lines: " + ", ".join(too_long)
