"""Config layering order and validation."""
import pytest
import yaml

from bench.config import parse_set, resolve
from bench.errors import ConfigError


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "defaults.yaml").write_text(yaml.safe_dump({
        "train": {"lr": 0.1, "epochs": 10, "betas": [0.9, 0.999], "grad_clip": None, "compile": False},
        "data": {"channels": "all63"},
        "method": {},
    }))
    (tmp_path / "recipes" / "toy.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.2, "epochs": 20},
                                                                    "method": {"width": 64}}))
    monkeypatch.setenv("BENCH_CONFIG_DIR", str(tmp_path))
    return tmp_path


def find(config_dir):
    """A recipe finder over a folder (the registry's finder looks beside each method's module)."""
    return lambda name: config_dir / "recipes" / f"{name}.yaml"


def test_layers_apply_in_order(config_dir, tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"train": {"lr": 0.3}, "method": {"depth": 3}}))
    cfg = resolve("toy", method_defaults={"width": 32, "depth": 1}, config_files=[user],
                  sets=["train.lr=0.4", "data.channels=occipital17"], find_recipe=find(config_dir))
    assert cfg["train"] == {"lr": 0.4, "epochs": 20, "betas": [0.9, 0.999], "grad_clip": None, "compile": False}
    assert cfg["method"] == {"width": 64, "depth": 3}  # method defaults < method file < user file
    assert cfg["data"]["channels"] == "occipital17"
    assert cfg["method_name"] == "toy"
    # each layer on its own
    assert resolve("toy", method_defaults={"width": 32, "depth": 1}, find_recipe=find(config_dir))["train"]["lr"] == 0.2
    assert resolve("toy", method_defaults={"width": 32, "depth": 1})["train"]["lr"] == 0.1  # no finder: no recipe
    assert resolve(None)["train"]["lr"] == 0.1
    assert resolve("other", find_recipe=find(config_dir))["train"]["lr"] == 0.1  # a method without a recipe file


def test_unknown_key_suggests_nearest(config_dir):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*Did you mean train.lr\?"):
        resolve(None, sets=["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"'method.widht'.*Did you mean method.width"):
        resolve("toy", method_defaults={"width": 32}, sets=["method.widht=3"])


def test_unknown_key_in_file_names_the_file(config_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.epoch'.*train.epochs"):
        resolve(None, config_files=[bad])


def test_types_are_checked_and_numbers_parsed(config_dir):
    assert resolve(None, sets=["train.lr=3e-4"])["train"]["lr"] == pytest.approx(3e-4)  # YAML reads 3e-4 as text
    assert isinstance(resolve(None, sets=["train.lr=1"])["train"]["lr"], float)
    assert resolve(None, sets=["train.grad_clip=1.5"])["train"]["grad_clip"] == 1.5  # null default takes anything
    with pytest.raises(ConfigError, match="expects a number"):
        resolve(None, sets=["train.epochs=many"])
    with pytest.raises(ConfigError, match="expects true/false"):
        resolve(None, sets=["train.compile=3"])
    with pytest.raises(ConfigError, match="is a section"):
        resolve(None, sets=["train=3"])


def test_parse_set_errors():
    assert parse_set("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set("train.lr")
    with pytest.raises(ConfigError, match="malformed"):
        parse_set("train..lr=1")


def test_missing_and_invalid_files(config_dir, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(None, config_files=[tmp_path / "nope.yaml"])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        resolve(None, config_files=[listy])


def test_repository_defaults_parse(monkeypatch):
    monkeypatch.delenv("BENCH_CONFIG_DIR", raising=False)
    cfg = resolve(None)
    assert cfg["train"]["lr"] == pytest.approx(3e-4) and cfg["protocol"]["name"] == "intra"
