"""Registry behaviour: registration, lookup with suggestions, entry points, plugin files, the CLI listing."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.registry import Registry, RegistryError, load_plugin, METHODS


def make_registry(group=None):
    return Registry("method", group=group)


def test_register_list_create_and_none_pruning():
    reg = make_registry()

    @reg.register("nice-test", description="a test method", citation="Song et al. 2024")
    class A:
        def __init__(self, lr=1.0):
            self.lr = lr

    @reg.register("atm-test", description="another")
    def build_b(**kw):
        return kw

    assert reg.list() == ["atm-test", "nice-test"]
    assert reg.list("nice*") == ["nice-test"]
    assert reg.create("nice-test", lr=3.0).lr == 3.0
    assert reg.create("nice-test", lr=None).lr == 1.0  # None keeps the default, as timm does
    entry = reg.get("nice-test")
    assert entry.citation == "Song et al. 2024" and "test_registry.py" in entry.origin


def test_duplicate_name_fails_loudly():
    reg = make_registry()
    reg.register("dup", description="first")(type("A", (), {}))
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("dup", description="second")(type("B", (), {}))


def test_missing_description_is_rejected():
    with pytest.raises(ValueError, match="description"):
        make_registry().register("x", description="")


def test_unknown_name_suggests_nearest():
    reg = make_registry()
    for name in ("nice", "nice-sa", "atm"):
        reg.register(name, description=name)(type(name, (), {}))
    with pytest.raises(RegistryError, match="Did you mean: nice") as info:
        reg.get("nicee")
    assert "Known: atm, nice, nice-sa" in str(info.value)


def _fake_distribution(root: Path, group: str, name: str, value: str) -> None:
    dist = root / "fakepkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")


def test_entry_point_discovery(tmp_path, monkeypatch):
    """A third-party package registers through the entry-point group, by decorator or by bare class."""
    pkg = tmp_path / "fake_methods_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        class ThirdParty:
            """A third-party method found through its entry point."""
            citation = "Doe 2026"
    '''))
    _fake_distribution(tmp_path, "bench.test_methods", "third-party", "fake_methods_pkg:ThirdParty")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", group="bench.test_methods")
    assert reg.list() == ["third-party"]
    entry = reg.get("third-party")
    assert entry.description == "A third-party method found through its entry point."
    assert entry.citation == "Doe 2026"


def test_broken_entry_point_is_named(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "bench.broken_methods", "broken", "no_such_module_xyz:Thing")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match="'broken'.*failed to load"):
        Registry("method", group="bench.broken_methods").list()


PLUGIN = '''
from bench.registry import register_method

@register_method("plugin-method-{tag}", description="a single-file method", citation="Plugin 2026")
class PluginMethod:
    pass
'''


def test_plugin_file_registers_once(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(PLUGIN.format(tag="a"))
    load_plugin(path)
    load_plugin(path)  # same file again: a no-op, not a duplicate error
    assert "plugin-method-a" in METHODS.list("plugin-*")
    with pytest.raises(RegistryError, match="not a .py file"):
        load_plugin(tmp_path / "missing.py")


def test_cli_plugin_and_list(tmp_path):
    path = tmp_path / "cli_method.py"
    path.write_text(PLUGIN.format(tag="cli"))
    bench = Path(sys.executable).with_name("bench")
    out = subprocess.run([str(bench), "--plugin", str(path), "list", "methods", "plugin-*"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plugin-method-cli" in out.stdout and "Plugin 2026" in out.stdout
    bad = subprocess.run([str(bench), "list", "nosuchkind"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown kind" in bad.stderr
