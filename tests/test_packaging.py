"""The package as a user installs it: one import namespace, package data, a wheel that works outside the checkout.

The wheel test builds the wheel from this checkout, installs it (without dependencies) into a fresh virtualenv
whose only view of the dependencies is this environment's site-packages (a ``.pth`` line: no second torch install,
and none of this checkout's own paths), and runs `bench` from a folder outside the checkout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

import bench
import bench.package

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def import_name(folder: Path) -> str:
    """The installed name of a package folder of the checkout (baselines/x → bench.baselines.x)."""
    parts = folder.relative_to(ROOT).parts
    return ".".join(("bench", *parts) if parts[0] in ("baselines", "methods") else parts)


def test_every_package_folder_is_in_the_wheel_and_nothing_else():
    on_disk = {import_name(init.parent) for top in ("bench", "baselines", "methods")
               for init in (ROOT / top).rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert on_disk - listed == set(), f"packages missing from pyproject.toml [tool.setuptools] packages"
    assert listed - on_disk == {"bench.configs"}  # configs/ is data, mapped as bench/configs
    assert all(name == "bench" or name.startswith("bench.") for name in listed)  # one import namespace


def test_checkout_gives_baselines_and_methods_their_installed_names():
    import bench.baselines.nice
    import bench.methods.mcdb

    assert Path(bench.baselines.nice.__file__) == ROOT / "baselines" / "nice.py"
    assert Path(bench.methods.mcdb.__file__) == ROOT / "methods" / "mcdb" / "__init__.py"
    assert bench.CHECKOUT == ROOT and bench.package.resource_dir("configs") == ROOT / "configs"
    assert "baselines" not in sys.modules and "methods" not in sys.modules  # nothing imports the bare names


def test_python_m_bench_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "bench", "list", "methods", "nice*"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nice-sa" in out.stdout and "mcdb" not in out.stdout


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    work = tmp / "elsewhere"
    work.mkdir()
    # nothing of the checkout on the path (a PYTHONPATH into it would also show pip its thingsbench.egg-info)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BENCH_CONFIG_DIR", "BENCH_DATA_ROOT",
                                                           "BENCH_RESULTS_DIR", "VIRTUAL_ENV")}
    env.update(BENCH_CACHE_DIR=str(tmp / "cache"), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    # from a copy: setuptools leaves build/ and *.egg-info in the source tree, and a stale build/lib would ship
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "results", "build", "dist", "*.egg-info",
                                                                 "__pycache__", "tests"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), "-q"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp / "dist").glob("thingsbench-*.whl"))
    venv.create(tmp / "venv", with_pip=False)
    python = tmp / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=300, env=env, cwd=work)
    assert installed.returncode == 0, installed.stderr
    # only now the dependencies: before, pip would see this environment's (editable) thingsbench as installed
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return {"python": python, "bench": tmp / "venv" / "bin" / "bench", "cwd": work, "env": env, "tmp": tmp}


PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "toy-bench-plugin"
version = "1.0"

[project.entry-points."bench.methods"]
toy-ridge = "toy_plugin.toy_ridge"

[tool.setuptools]
packages = ["toy_plugin"]

[tool.setuptools.package-data]
toy_plugin = ["*.yaml"]
"""
PLUGIN_MODULE = """
from bench.baselines.ridge import Ridge
from bench.registry import register_method


@register_method("toy-ridge", description="ridge from a third-party package, with its own recipe")
class ToyRidge(Ridge):
    pass
"""


def install_plugin_package(wheel_env: dict, tmp: Path) -> None:
    """A third-party package: a method through the entry-point group, its recipe shipped as package data."""
    (tmp / "plugin" / "toy_plugin").mkdir(parents=True)
    (tmp / "plugin" / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (tmp / "plugin" / "toy_plugin" / "__init__.py").write_text("")
    (tmp / "plugin" / "toy_plugin" / "toy_ridge.py").write_text(PLUGIN_MODULE)
    (tmp / "plugin" / "toy_plugin" / "toy-ridge.yaml").write_text("method:\n  alpha: 7.0\n")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(tmp / "plugin"), "--no-deps",
                            "--no-build-isolation", "-w", str(tmp / "plugin-dist"), "-q"], capture_output=True,
                           text=True, timeout=300, env=wheel_env["env"], cwd=wheel_env["cwd"])
    assert built.returncode == 0, built.stderr
    run_installed(wheel_env, sys.executable, "-m", "pip", "--python", wheel_env["python"], "install", "--no-deps",
                  "-q", next((tmp / "plugin-dist").glob("*.whl")))


def run_installed(wheel_env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=wheel_env["cwd"],
                         env=wheel_env["env"], timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_wheel_runs_outside_the_checkout(wheel_env):
    where = run_installed(wheel_env, wheel_env["python"], "-c",
                          "import bench, bench.baselines.nice as n; print(bench.CHECKOUT, n.__file__)").stdout
    assert where.startswith("None ") and str(ROOT) not in where and "site-packages/bench/baselines" in where
    listed = run_installed(wheel_env, wheel_env["bench"], "list", "methods").stdout
    assert all(name in listed for name in ("mcdb", "nice", "atm", "eegproject", "ridge"))
    tiny = ("--set", "data.synthetic_preset=tiny")
    run_installed(wheel_env, wheel_env["python"], "-m", "bench", "run", "--method", "ridge", "--subjects", "1", *tiny)
    run_installed(wheel_env, wheel_env["bench"], "train", "--method", "mcdb", "--subject", "1", *tiny,
                  "--set", "train.epochs=1")
    records = [json.loads(p.read_text()) for p in (wheel_env["cwd"] / "results" / "runs").glob("*.json")]
    assert sorted(r["method"] for r in records) == ["mcdb", "ridge"]
    assert all(r["status"] == "completed" for r in records)
    for r in records:
        assert r["provenance"]["bench_version"] == bench.__version__
        assert r["provenance"]["git_commit"] is None  # installed, not a checkout: no commit to claim
    mcdb = next(r for r in records if r["method"] == "mcdb")
    assert mcdb["provenance"]["recipe"][:2] == ["baselines/nice.yaml", "methods/mcdb/mcdb.yaml"], mcdb["provenance"]


@pytest.mark.slow
def test_a_plugin_package_ships_its_method_and_recipe(wheel_env):
    install_plugin_package(wheel_env, wheel_env["tmp"])
    assert "toy-ridge" in run_installed(wheel_env, wheel_env["bench"], "list", "methods").stdout
    results = wheel_env["tmp"] / "plugin-results"
    run_installed(wheel_env, wheel_env["bench"], "train", "--method", "toy-ridge", "--subject", "1",
                  "--set", "data.synthetic_preset=tiny", "--results-dir", results)
    (record,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["config"]["method"]["alpha"] == 7.0  # the recipe from the plugin's package data applied
    assert record["provenance"]["recipe"][0].endswith("site-packages/toy_plugin/toy-ridge.yaml")
