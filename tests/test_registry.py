"""Registry behaviour: registration, lookup with suggestions, entry points, plugin files, the CLI listing,
built-ins found on disk and recipes beside their methods."""
import json
import os
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


HOSTILE_NAMES = ["../../x", "a/b", "..", "a..b", "<script>alert(1)</script>", "Nice", "", " nice", "-x", "nice\n"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_unsafe_names_are_refused_naming_the_plugin_file(tmp_path, name):
    """A registered name becomes a file name (its recipe <name>.yaml): it must be one harmless path component."""
    path = tmp_path / "hostile_plugin.py"
    path.write_text(f"from bench.registry import register_method\n\n"
                    f"@register_method({name!r}, description='hostile')\nclass Hostile:\n    pass\n")
    with pytest.raises(RegistryError) as info:
        load_plugin(path)
    message = str(info.value)
    assert str(path) in message and repr(name) in message and "[a-z0-9][a-z0-9._+-]*" in message
    assert name not in METHODS.names()


def test_unsafe_entry_point_name_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_upper_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('class Loud:\n    """A method with a shouting name."""\n')
    _fake_distribution(tmp_path, "bench.upper_methods", "LOUD", "fake_upper_pkg:Loud")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match=r"fake_upper_pkg.*method name 'LOUD' is not allowed"):
        Registry("method", group="bench.upper_methods").list()


@pytest.mark.parametrize("name", ["nice", "nice-sa", "open_clip", "vit-h-14+text", "a1.2", "0"])
def test_safe_names_pass(name):
    reg = make_registry()
    reg.register(name, description="fine")(type("Fine", (), {}))
    assert reg.list() == [name]


def test_every_builtin_name_follows_the_rule():
    from bench.registry import REGISTRIES, check_name

    for kind, registry in REGISTRIES.items():
        names = registry.names()
        assert names, kind
        for name in names:
            check_name(kind, name, "built-in")  # raises on a bad one


def test_cli_refuses_a_plugin_with_an_unsafe_name(tmp_path):
    path = tmp_path / "bad_plugin.py"
    path.write_text("from bench.registry import register_method\n\n"
                    "@register_method('../../x', description='escapes')\nclass Bad:\n    pass\n")
    bench = Path(sys.executable).with_name("bench")
    out = subprocess.run([str(bench), "--plugin", str(path), "list", "methods"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and str(path) in out.stderr and "'../../x' is not allowed" in out.stderr
    assert "Traceback" not in out.stderr


# --- built-ins found from the package folders, recipes beside their methods ---------------------------------------
def test_builtin_packages_are_walked_on_disk(tmp_path, monkeypatch):
    """A module dropped into a built-in package registers without any install metadata (no entry point)."""
    pkg = tmp_path / "walked_pkg_xyz"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("from walked_pkg_xyz import REG\n\n"
                                         "@REG.register('deep-one', description='found by walking')\n"
                                         "class Deep:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", builtin_packages=("walked_pkg_xyz",))
    import walked_pkg_xyz

    walked_pkg_xyz.REG = reg
    assert reg.list() == ["deep-one"]


def test_recipe_is_the_yaml_beside_the_method_module(tmp_path):
    from bench.registry import Entry, method_recipe, recipe_path

    assert method_recipe("nice") == Path(__file__).parents[1] / "baselines" / "nice.yaml"
    assert method_recipe("mcdb") == Path(__file__).parents[1] / "methods" / "mcdb" / "mcdb.yaml"
    path = tmp_path / "beside_method.py"
    path.write_text(PLUGIN.format(tag="beside"))
    load_plugin(path)
    assert method_recipe("plugin-method-beside") == tmp_path / "plugin-method-beside.yaml"
    # the name is never a path: an Entry built by hand with a hostile name is refused before any path is formed
    with pytest.raises(RegistryError, match=r"'\.\./\.\./x' is not allowed"):
        recipe_path(Entry("../../x", METHODS.get("nice").obj, "hostile", "", "by hand"))
    assert recipe_path(Entry("no-file", len, "a builtin", "", "by hand")) is None  # no source file, no recipe


TOY_METHOD = '''
from bench.baselines.ridge import Ridge
from bench.registry import register_method


@register_method("toy", description="ridge under another name (a new built-in baseline)")
class Toy(Ridge):
    defaults = {**Ridge.defaults, "alpha": 1.0}
'''
TOY_RECIPE = "data:\n  channels: occipital17\nmethod:\n  alpha: 3.0\n"


def test_a_new_builtin_takes_one_method_file_and_one_recipe_beside_it(tiny_root, tmp_path):
    """baselines/toy.py + baselines/toy.yaml in a copy of the checkout: listed and trained, no reinstall."""
    import shutil

    repo = Path(__file__).parents[1]
    for folder in ("bench", "baselines", "methods", "configs"):
        shutil.copytree(repo / folder, tmp_path / "src" / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "src" / "baselines" / "toy.py").write_text(TOY_METHOD)
    (tmp_path / "src" / "baselines" / "toy.yaml").write_text(TOY_RECIPE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    bench = str(Path(sys.executable).with_name("bench"))
    listed = subprocess.run([bench, "list", "methods"], capture_output=True, text=True, timeout=300, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "toy" in listed.stdout.split() and "nice" in listed.stdout.split()
    out = subprocess.run([bench, "train", "--method", "toy", "--subject", "1", "--data-root", str(tiny_root),
                          "--results-dir", str(tmp_path / "results"), "--set", "protocol.val_concepts=4", "--quiet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    (record,) = (tmp_path / "results" / "runs").glob("*.json")
    record = json.loads(record.read_text())
    config = record["config"]
    assert record["status"] == "completed" and record["method"] == "toy"
    assert config["method_name"] == "toy" and config["method"]["alpha"] == 3.0  # the recipe beside the method
    assert config["data"]["channels"] == "occipital17"
