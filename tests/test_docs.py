"""The documentation against the code: every subcommand, option and config key documented, README short, links
inside the repository, and the README's method example runs as printed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import typer
import yaml

from bench.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "methods").rglob("*.md")), *sorted((ROOT / "baselines").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def documentation() -> str:
    return "\n".join(page.read_text() for page in PAGES if page.name != "CHANGELOG.md")


def commands(group, prefix: str = "bench") -> dict:
    """Every leaf subcommand by its full name (`bench data check`)."""
    out = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer may use its own click classes)
            out.update(commands(command, f"{prefix} {name}"))
        else:
            out[f"{prefix} {name}"] = command
    return out


def config_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.extend(config_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [prefix + key])
    return keys


def test_every_subcommand_and_option_is_documented():
    text = documentation()
    found = commands(typer.main.get_command(app))
    assert {"bench train", "bench run", "bench data check", "bench leaderboard"} <= set(found)
    missing = [name for name in found if name not in text]
    assert not missing, f"subcommands not in README.md or docs/: {missing}"
    options = [f"{name} {opt}" for name, command in found.items() for param in command.params
               for opt in param.opts if opt.startswith("--") and opt != "--help" and opt not in text]
    assert not options, f"options not in README.md or docs/: {options}"


def test_every_config_key_is_documented():
    text = documentation()
    keys = config_keys(yaml.safe_load((ROOT / "configs" / "defaults.yaml").read_text()))
    assert len(keys) > 30 and "train.epochs" in keys
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"config keys of configs/defaults.yaml not in README.md or docs/: {missing}"


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def test_links_stay_inside_the_repository_and_exist():
    bad = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, f"links outside the repository or to missing files: {bad}"


def readme_method_example() -> str:
    section = README.read_text().split("## Writing a method", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_method_example_runs_as_printed(tiny_root, tmp_path):
    code = readme_method_example()
    assert len(code.splitlines()) <= 30
    plugin = tmp_path / "my_method.py"
    plugin.write_text(code)
    out = subprocess.run([sys.executable, "-m", "bench", "--plugin", str(plugin), "train", "--method", "my-method",
                          "--subject", "1", "--data-root", str(tiny_root), "--results-dir", str(tmp_path / "results"),
                          "--set", "train.epochs=2", "--set", "protocol.val_concepts=4", "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert len(list((tmp_path / "results" / "runs").glob("*.json"))) == 1
