"""Recipes: ``extends``, each method's recipe beside its module setting only what differs from the method's defaults,
the resolved config of every built-in unchanged, and a valid search space for every built-in method.

Regenerate the resolved-config golden after an intended recipe change with
``UPDATE_GOLDEN=1 pytest tests/test_config_recipes.py`` and review the diff: every run's spec hash depends on it.
"""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml

from bench.config import ConfigError, applied_recipes, leaf_keys, recipe_layers, resolve, synthetic_recipe
from bench.method import DataInfo
from bench.registry import METHODS, method_recipe
from bench.execute import resolve_config
from bench.specs import flag_overrides, recipe_record
from bench.records import hashed_config

REPO = Path(__file__).parents[1]
GOLDEN = Path(__file__).parent / "golden" / "resolved_configs.jsonl"
_spec = importlib.util.spec_from_file_location("dump_resolved_configs", REPO / "scripts" / "dump_resolved_configs.py")
dump = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dump)
BUILTINS = dump.builtin_methods()


class Recipes:
    """A folder of recipe files and the finder that resolve() follows (the registry's looks beside each module)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir()

    def write(self, name: str, text: str) -> Path:
        path = self.folder / f"{name}.yaml"
        path.write_text(text)
        return path

    def find(self, name: str) -> Path:
        return self.folder / f"{name}.yaml"


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    (tmp_path / "defaults.yaml").write_text(yaml.safe_dump({"data": {"root": None},
                                                            "train": {"lr": 0.1, "epochs": 10, "batch_size": 8},
                                                            "method": {}}))
    monkeypatch.setenv("BENCH_CONFIG_DIR", str(tmp_path))
    return Recipes(tmp_path / "recipes")


# --- extends ------------------------------------------------------------------------------------------------------
def test_extends_applies_the_parent_chain_first(recipes, tmp_path):
    recipes.write("base", "train:\n  lr: 0.2\n  epochs: 30\n")
    recipes.write("child", "extends: base\ntrain:\n  lr: 0.3\n")
    recipes.write("grandchild", "extends: child\ntrain:\n  batch_size: 16\n")
    cfg = resolve("grandchild", find_recipe=recipes.find)
    assert cfg["train"] == {"lr": 0.3, "epochs": 30, "batch_size": 16} and "extends" not in cfg
    assert [s for _, s in recipe_layers(recipes.find("grandchild"), recipes.find)] == [
        str(recipes.find(n)) for n in ("base", "child", "grandchild")]
    user = tmp_path / "user.yaml"  # a --config file may extend a recipe too (configs/recipes/mcdb-nice-paper.yaml)
    user.write_text("extends: base\n")
    assert resolve("other", config_files=[user], find_recipe=recipes.find)["train"]["epochs"] == 30
    # a bad value set by a parent is blamed on the parent's file, not on the file that extends it
    recipes.write("base", "train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"base.yaml: train.epochs must be an integer >= 1"):
        resolve("child", find_recipe=recipes.find)


def test_extends_refuses_cycles_unknown_and_malformed_parents(recipes, tmp_path):
    recipes.write("a", "extends: b\n")
    recipes.write("b", "extends: a\n")
    with pytest.raises(ConfigError, match=r"b.yaml: extends makes a cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        resolve("a", find_recipe=recipes.find)
    recipes.write("self", "extends: self\n")
    with pytest.raises(ConfigError, match=r"self.yaml: extends makes a cycle"):
        resolve("self", find_recipe=recipes.find)
    recipes.write("orphan", "extends: missing\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml: extends: method 'missing' has no recipe file to extend "
                                          r"\(expected .*missing.yaml\)"):
        resolve("orphan", find_recipe=recipes.find)
    recipes.write("listy", "extends: [a, b]\n")
    with pytest.raises(ConfigError, match=r"listy.yaml: extends expects a method name such as 'nice', found"):
        resolve("listy", find_recipe=recipes.find)
    with pytest.raises(ConfigError, match=r"orphan.yaml: extends: 'missing' cannot be followed here"):
        resolve(None, config_files=[recipes.find("orphan")])  # no finder given


def test_extends_an_unknown_method_names_the_file_and_the_nearest_method(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("extends: nicee\n")
    with pytest.raises(ConfigError, match=r"user.yaml: extends: unknown method 'nicee'. Did you mean: nice"):
        resolve_config("mcdb", config_files=[user])
    user.write_text("extends: ridge\n")  # registered, but has no recipe
    with pytest.raises(ConfigError, match=r"user.yaml: extends: method 'ridge' has no recipe file .*ridge.yaml"):
        resolve_config("mcdb", config_files=[user])


# --- the recipe by data ---------------------------------------------------------------------------------------------
def test_synthetic_recipe_applies_only_when_the_resolved_data_root_is_null(recipes, tmp_path):
    """``<name>.synthetic.yaml`` is layered over ``<name>.yaml`` on the built-in synthetic data; data.root may come
    from any later layer (--config, --set, --data-root), so the choice follows the resolved value."""
    recipes.write("m", "train:\n  lr: 0.2\n  epochs: 30\n")
    recipes.write("m.synthetic", "train:\n  epochs: 3\n")
    assert synthetic_recipe(recipes.find("m")) == recipes.folder / "m.synthetic.yaml"
    assert resolve("m", find_recipe=recipes.find)["train"] == {"lr": 0.2, "epochs": 3, "batch_size": 8}
    real = resolve("m", sets=['data.root="/data/x"'], find_recipe=recipes.find)
    assert real["train"] == {"lr": 0.2, "epochs": 30, "batch_size": 8}
    user = tmp_path / "user.yaml"
    user.write_text("data:\n  root: /data/x\n")
    assert resolve("m", config_files=[user], find_recipe=recipes.find)["train"]["epochs"] == 30
    assert resolve("m", config_files=[user], sets=["data.root=null"], find_recipe=recipes.find)["train"]["epochs"] == 3
    assert applied_recipes("m", real, recipes.find) == [str(recipes.find("m"))]
    assert applied_recipes("m", {"data": {"root": None}}, recipes.find) == [
        str(recipes.find("m")), str(recipes.folder / "m.synthetic.yaml")]
    recipes.write("m.synthetic", "data:\n  root: /data/y\n")  # would contradict the choice it was made by
    with pytest.raises(ConfigError, match=r"m.synthetic.yaml: a synthetic recipe applies only when data.root is null"):
        resolve("m", find_recipe=recipes.find)


def test_mcdb_uses_the_paper_recipe_on_a_real_root_and_the_cpu_recipe_on_synthetic_data():
    synthetic = resolve_config("mcdb")
    real = resolve_config("mcdb", overrides=flag_overrides(data_root="/data/things-eeg"))
    paper = resolve_config("mcdb", config_files=[REPO / "configs/recipes/mcdb-nice-paper.yaml"])
    assert {k: synthetic["train"][k] for k in ("lr", "batch_size", "epochs")} == {"lr": 1e-3, "batch_size": 64,
                                                                                  "epochs": 40}
    assert {k: real["train"][k] for k in ("optimizer", "lr", "betas", "batch_size", "epochs")} == {
        "optimizer": "adam", "lr": 2e-4, "betas": [0.5, 0.999], "batch_size": 1000, "epochs": 200}
    # the paper preset, whatever the data; the synthetic recipe's checkpoint_every is kept: where files go, not the run
    assert hashed_config({**real, "data": {**real["data"], "root": None}}) == hashed_config(paper)
    assert synthetic["train"]["checkpoint_every"] == 5 and real["train"]["checkpoint_every"] == 1
    assert recipe_record("mcdb", real) == ["baselines/nice.yaml", "methods/mcdb/mcdb.yaml"]
    assert recipe_record("mcdb", synthetic) == ["baselines/nice.yaml", "methods/mcdb/mcdb.yaml",
                                                "methods/mcdb/mcdb.synthetic.yaml"]
    assert recipe_record("nice", synthetic) == ["baselines/nice.yaml"] and recipe_record("ridge", synthetic) == []


# --- protocol layers ----------------------------------------------------------------------------------------------
def test_a_protocol_layer_applies_after_the_recipe_when_the_resolved_protocol_names_it(recipes, tmp_path):
    """``<name>.<protocol>.yaml`` follows the *resolved* protocol.name (whichever layer set it), sits between the
    recipe and the synthetic recipe, and may set neither protocol.name nor data.root (nor extend anything)."""
    (recipes.folder.parent / "defaults.yaml").write_text(yaml.safe_dump(
        {"data": {"root": None}, "protocol": {"name": "intra"}, "train": {"lr": 0.1, "epochs": 10, "batch_size": 8},
         "method": {}}))
    layer_of = lambda method, protocol: [recipes.folder / f"{method}.{protocol}.yaml"]  # noqa: E731
    recipes.write("m", "train:\n  lr: 0.2\n  epochs: 30\n")
    recipes.write("m.published", "train:\n  lr: 0.5\n  batch_size: 4\n")
    recipes.write("m.synthetic", "train:\n  batch_size: 2\n")
    kw = {"find_recipe": recipes.find, "find_protocol_layer": layer_of}
    assert resolve("m", **kw)["train"] == {"lr": 0.2, "epochs": 30, "batch_size": 2}  # intra: no layer
    assert resolve("m", sets=["protocol.name=published"], **kw)["train"] == {"lr": 0.5, "epochs": 30, "batch_size": 2}
    user = tmp_path / "user.yaml"
    user.write_text("protocol:\n  name: published\n")
    assert resolve("m", config_files=[user], **kw)["train"]["lr"] == 0.5  # --config chose the protocol
    real = resolve("m", sets=["protocol.name=published", 'data.root="/x"'], **kw)
    assert real["train"] == {"lr": 0.5, "epochs": 30, "batch_size": 4}  # no synthetic recipe on a real root
    assert applied_recipes("m", real, recipes.find, layer_of) == [str(recipes.find("m")),
                                                                 str(*layer_of("m", "published"))]
    for text, words in (("protocol:\n  name: intra\n", "must not set protocol.name"),
                        ("data:\n  root: /y\n", "must not set data.root"),
                        ("extends: m\n", "cannot use extends")):
        recipes.write("m.published", text)
        with pytest.raises(ConfigError, match=rf"m.published.yaml: .*{words}"):
            resolve("m", sets=["protocol.name=published"], **kw)


def test_protocol_layers_follow_extends_only_to_a_parent_the_method_derives_from():
    from bench.specs import protocol_recipe

    base = REPO / "baselines"
    nice = base / "nice.published.yaml"
    assert protocol_recipe("nice", "published") == [nice]
    # the parent's protocol first, then the variant's released wiring
    assert protocol_recipe("nice-sa", "published") == [nice, base / "nice-sa.published.yaml"]
    assert protocol_recipe("nice-ga", "published") == [nice, base / "nice-ga.published.yaml"]
    # MCDB's recipe extends nice (NICE's training block) but MCDB is no NICE: it declares no published protocol
    assert protocol_recipe("mcdb", "published") == [] and protocol_recipe("ridge", "published") == []
    assert protocol_recipe("nice", "published-inter") == [] and protocol_recipe("nice", "intr") == []
    assert protocol_recipe("eegproject", "inter") == [base / "eegproject.inter.yaml"]
    published = resolve_config("nice-ga", overrides=flag_overrides(protocol="published"))
    assert recipe_record("nice-ga", published) == ["baselines/nice.yaml", "baselines/nice-ga.yaml",
                                                   "baselines/nice.published.yaml", "baselines/nice-ga.published.yaml"]
    assert published["method"]["encoder_kwargs"] == {"ga_mode": "reference"}
    assert (published["eval"]["main_gallery"], published["train"]["selection"]) == ("centroid", "last")
    atm = resolve_config("atm", overrides=flag_overrides(protocol="published"))
    assert atm["method"]["encoder_kwargs"] == {"token_slice": "paper"}


def test_eegproject_takes_ubps_inter_learning_rate_under_inter_only():
    assert resolve_config("eegproject")["train"]["lr"] == 1e-4
    inter = resolve_config("eegproject", overrides=flag_overrides(protocol="inter"))
    assert inter["train"]["lr"] == 1e-5
    assert recipe_record("eegproject", inter) == ["baselines/eegproject.yaml", "baselines/eegproject.inter.yaml"]
    assert resolve_config("eegproject", overrides=flag_overrides(protocol="published-inter"))["train"]["lr"] == 1e-5
    assert resolve_config("eegproject", overrides=flag_overrides(protocol="published"))["train"]["lr"] == 1e-4


# --- the built-in recipes -----------------------------------------------------------------------------------------
def test_resolved_configs_of_every_builtin_are_unchanged():
    """Every built-in method, its LOSO form, named recipes and ablation variants resolve as the golden file says."""
    got = list(dump.lines(REPO))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text("".join(line + "\n" for line in got))
    want = GOLDEN.read_text().splitlines()
    assert [json.loads(g)["method"] for g in got] == [json.loads(w)["method"] for w in want]
    for g, w in zip(got, want):
        case = {k: json.loads(w)[k] for k in ("method", "files", "sets")}
        assert json.loads(g)["config"] == json.loads(w)["config"], case
        assert g == w, f"{case}: same values, different key order or number formatting"


@pytest.mark.parametrize("method", BUILTINS)
def test_recipes_set_only_what_differs_from_the_method_defaults(method):
    """The class's ``defaults`` is the ``method`` section; a recipe restating one of them is a second copy."""
    defaults = METHODS.get(method).obj.defaults
    recipe = method_recipe(method)
    layers = recipe_layers(recipe, method_recipe) if recipe.is_file() else []
    small = synthetic_recipe(recipe)
    layers += [(layer, source) for layer, source in (recipe_layers(small, method_recipe) if small.is_file() else [])]
    for layer, source in layers:
        for key, value in (layer.get("method") or {}).items():
            assert value != defaults[key], f"{source} restates method.{key}: {value!r}, the method's default"


def test_every_recipe_file_belongs_to_a_registered_method():
    """A recipe is found by its method's name (``<name>.yaml``, ``<name>.synthetic.yaml``, ``<name>.<protocol>.yaml``
    for a registered protocol): a misnamed file would silently be ignored, so none may exist."""
    from bench.registry import PROTOCOLS

    assert not (REPO / "configs" / "methods").exists()  # recipes live beside their methods now
    recipes = {method_recipe(m) for m in BUILTINS} | {synthetic_recipe(method_recipe(m)) for m in BUILTINS}
    recipes |= {method_recipe(m).with_name(f"{m}.{p}.yaml") for m in BUILTINS for p in PROTOCOLS.names()}
    for path in [*(REPO / "baselines").rglob("*.yaml"), *(REPO / "methods").rglob("*.yaml")]:
        assert path in recipes, f"{path} is not <name>.yaml of a method registered in its folder"
    assert {p.name for p in recipes if p.is_file()} >= {"nice.yaml", "nice-sa.yaml", "nice-ga.yaml", "mcdb.yaml"}


def test_nice_training_block_is_written_once():
    texts = {p: p.read_text() for p in [*(REPO / "baselines").glob("*.yaml"), *(REPO / "configs").rglob("*.yaml"),
                                        *(REPO / "methods").rglob("*.yaml")]}
    assert [p.name for p, t in texts.items() if "lr: 2.0e-4" in t] == ["nice.yaml"]
    for extending in ("baselines/nice-sa.yaml", "baselines/nice-ga.yaml", "methods/mcdb/mcdb.yaml",
                      "configs/recipes/mcdb-nice-paper.yaml"):
        assert yaml.safe_load((REPO / extending).read_text()) == {"extends": "nice"}, extending


# --- search spaces ------------------------------------------------------------------------------------------------
def _sample_points(spec: dict) -> list:
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        return list(args)
    return [args[0], args[1] - 1] if kind == "randint" else list(args)  # randint's upper bound is exclusive


@pytest.mark.parametrize("method", BUILTINS)
def test_every_builtin_has_a_search_space_of_valid_keys_and_values(method):
    from bench.hparam_search import load_search_space

    path = REPO / "configs" / "search" / f"{method}.yaml"
    resolved = resolve_config(method)
    space = load_search_space(path, resolved)  # every key must name a key of the method's resolved config
    raw = yaml.safe_load(path.read_text())
    assert set(space) == set(raw) and set(raw) <= set(leaf_keys(resolved))
    info = DataInfo(n_chans=63, n_times=250, sfreq=250.0, ch_names=tuple(f"E{i}" for i in range(63)), feature_dim=16,
                    n_subjects=10, n_train_concepts=1654, has_text=True)
    for key, spec in raw.items():  # each end of a range and each choice passes the config rules
        for value in _sample_points(spec):
            cfg = resolve_config(method, sets=[f"{key}={json.dumps(value)}"])
            if key.startswith("method."):  # and the method accepts it (an encoder argument's name, a range)
                METHODS.create(method, info=info, **cfg["method"])
