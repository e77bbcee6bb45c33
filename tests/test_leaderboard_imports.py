"""The leaderboard package has no import cycle, counting function-level imports (`import_graph` reads them all)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import bench.leaderboard
from import_graph import find_cycle, import_graph

LEADERBOARD = Path(bench.leaderboard.__file__).parent


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_the_graph_sees_relative_absolute_and_function_level_imports(tmp_path):
    pkg = write_package(tmp_path, {
        "__init__.py": "from .a import f\n",
        "a.py": "from . import b\n\ndef f():\n    return b.g()\n",
        "b.py": "def g():\n    from pkg.a import f  # hidden from Python at import time, not from the graph\n",
        "sub/__init__.py": "",
        "sub/c.py": "from __future__ import annotations\nfrom .. import b\nfrom ..a import f\nimport pkg.sub\nimport numpy\n",
    })
    edges = import_graph(pkg, "pkg")
    assert edges == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.b", "pkg.a", "pkg.sub"}}
    assert find_cycle(edges) == ["pkg.a", "pkg.b", "pkg.a"]


def test_a_package_reexporting_its_modules_is_not_a_cycle(tmp_path):
    pkg = write_package(tmp_path, {"__init__.py": "from .a import f\nfrom . import b\n",
                                   "a.py": "from .b import g\n\ndef f():\n    return g()\n",
                                   "b.py": "def g():\n    return 1\n"})
    assert find_cycle(import_graph(pkg, "pkg")) is None


def test_leaderboard_modules_import_no_module_that_imports_them_back():
    edges = import_graph(LEADERBOARD, "bench.leaderboard")
    # the graph is read, not empty: the renderers' dispatch and the HTML page's inputs are edges of it
    assert {"bench.leaderboard.html_report", "bench.leaderboard.board"} <= edges["bench.leaderboard.report"]
    assert "bench.leaderboard.contents" in edges["bench.leaderboard.html_report"]
    assert find_cycle(edges) is None, " → ".join(find_cycle(edges))
