"""The rule table of the harness keys (bench/config_rules.py), checked at the end of resolve()."""
import re
from pathlib import Path

import pytest
import yaml

from bench.config import leaf_keys, resolve
from bench.errors import ConfigError
from bench.config_rules import RULES, did_you_mean, kway_values

DEFAULTS = Path(__file__).resolve().parent.parent / "configs" / "defaults.yaml"

#: one value each rule refuses (key → --set value, a fragment the message must hold)
BAD = [
    ("data.root", "3", "null or a string"),
    ("data.synthetic_preset", "tiyn", "one of tiny, default, full; got 'tiyn'. Did you mean tiny?"),
    ("data.channels", "occ17", "Did you mean occipital17?"),
    ("data.channels", "[O1, Oz, O1]", "distinct THINGS-EEG channel names"),
    ("data.channels", "[O1, 3]", "list of distinct THINGS-EEG channel names"),
    ("data.tmin", "[0]", "expects a number"),  # the default's type, checked while layering
    ("data.tmax", "0.0", "data.tmax must be larger than data.tmin; got data.tmax=0.0, data.tmin=0.0"),
    ("data.train_average", "3", "expects true/false"),  # the default's type, checked while layering
    ("data.test_repetitions", "0", "null or an integer >= 1; got 0"),
    ("data.features", "[a]", "null or a string"),
    ("data.prompt_template", "A {thing}", "with {concept} and no other braces"),
    ("data.prompt_template", "'{concept} {'", "with {concept} and no other braces"),
    ("data.prompt_underscores_to_spaces", "yes please", "expects true/false"),
    ("protocol.name", "intr", "protocol.name must be one of inter, intra, published, published-inter; got 'intr'. "
                              "Did you mean intra?"),
    ("protocol.validation", "tset", "one of concepts, images, none, test, test-other-subjects; got 'tset'. "
                                    "Did you mean test?"),
    ("protocol.validation", "test", "protocol.validation must be a validation kind the protocol declares; got "
                                    "protocol.validation='test', protocol.name='intra'. Under protocol intra it may be "
                                    "concepts"),
    ("protocol.validation", "images", "Under protocol intra it may be concepts"),
    ("protocol.val_concepts", "0", "an integer >= 1; got 0"),
    ("protocol.val_images", "0", "an integer >= 1; got 0"),
    ("protocol.val_seed", "-1", "an integer >= 0; got -1"),
    ("train.epochs", "0", "train.epochs must be an integer >= 1; got 0."),
    ("train.epochs", "-1", "an integer >= 1; got -1"),
    ("train.epochs", "2.5", "an integer >= 1; got 2.5"),
    ("train.batch_size", "0", "train.batch_size must be an integer >= 1; got 0"),
    ("train.optimizer", "adm", "one of adam, adamw, sgd; got 'adm'. Did you mean adam?"),
    ("train.lr", "0", "train.lr must be a number > 0; got 0.0"),
    ("train.weight_decay", "-0.1", "a number >= 0"),
    ("train.betas", "[0.9]", "two numbers in [0, 1)"),
    ("train.betas", "[0.9, 1.0]", "two numbers in [0, 1)"),
    ("train.betas", "[0.9, b]", "two numbers in [0, 1)"),
    ("train.momentum", "1.0", "a number in [0, 1)"),
    ("train.schedule", "cos", "one of constant, cosine, step; got 'cos'. Did you mean cosine?"),
    ("train.warmup_epochs", "-1", "an integer >= 0"),
    ("train.warmup_epochs", "50", "smaller than train.epochs"),
    ("train.step_size", "0", "an integer >= 1"),
    ("train.step_gamma", "0", "a number in (0, 1]"),
    ("train.grad_clip", "0", "null or a number > 0; got 0"),
    ("train.grad_accum", "0", "an integer >= 1"),
    ("train.selection", "bset", "train.selection must be one of best_val, last; got 'bset'. Did you mean best_val?"),
    ("train.patience", "0", "null or an integer >= 1; got 0"),
    ("train.patience", "true", "null or an integer >= 1; got True"),
    ("train.val_every", "0", "train.val_every must be an integer >= 1; got 0"),
    ("train.stop_on", "train-loss", "one of val_top1, train_loss; got 'train-loss'. Did you mean train_loss?"),
    ("train.min_delta", "-0.001", "train.min_delta must be a number >= 0; got -0.001"),
    ("train.mixed_precision", "bf61", "one of auto, no, bf16, fp16; got 'bf61'. Did you mean bf16?"),
    ("train.compile", "3", "expects true/false"),
    ("train.num_threads", "0", "null or an integer >= 1; got 0"),
    ("train.save_model", "3", "expects true/false"),
    ("eval.kway", "[1, 2]", "a list of distinct integers >= 2"),
    ("eval.kway", "[2, 2]", "a list of distinct integers >= 2"),
    ("eval.kway", "[2.5]", "a list of distinct integers >= 2"),
    ("eval.kway", "fast", "auto or a list of distinct integers >= 2; got 'fast'"),
    ("eval.galleries", "[imag]", "Did you mean image?"),
    ("eval.galleries", "[text]", "The image gallery is always scored"),
    ("eval.galleries", "[image, image]", "distinct names among image, text, centroid"),
    ("eval.galleries", "image", "expects a list"),  # the default's type, checked while layering
    ("eval.main_gallery", "centroids", "one of image, centroid; got 'centroids'. Did you mean centroid?"),
    ("eval.main_gallery", "centroid", "eval.main_gallery must be image under an honest protocol"),
    ("eval.similarity", "dots", "one of cosine, dot; got 'dots'. Did you mean dot?"),
    ("eval.similarity", "dot", "eval.similarity must be cosine under an honest protocol"),
]

#: rules between a published protocol's keys (protocol.name set too): item → fragment
BAD_PUBLISHED = [
    (["protocol.name=published", "protocol.validation=test-other-subjects"],
     "Under protocol published it may be concepts, images, none, test."),
    (["protocol.name=published", "protocol.validation=none"],
     "protocol.validation must be none only with train.selection last"),
    (["protocol.name=published", "protocol.validation=none", "train.selection=last", "train.patience=3"],
     "train.stop_on must be train_loss when there is no validation set and train.patience is set"),
]

GOOD = ["data.channels=occipital17", "data.channels=[O1, Oz, O2]", "data.channels=O1,Oz,O2", "eval.kway=[2, 50]",
        "eval.kway=auto",
        "eval.kway=[]", "eval.galleries=[image, text, centroid]", "protocol.name=inter", "train.patience=5",
        "train.grad_clip=1", "data.test_repetitions=4", "train.warmup_epochs=49", "data.tmin=-0.2",
        "train.betas=[0, 0.5]", "train.optimizer=sgd", "train.momentum=0", "train.step_gamma=1",
        "train.num_threads=2", "data.root=/some/where", "data.prompt_template='{concept}'",
        "protocol.val_images=1", "train.stop_on=train_loss", "train.min_delta=0.001", "protocol.name=published",
        "protocol.name=published-inter"]

#: what only a published protocol allows
GOOD_PUBLISHED = [["protocol.name=published", "protocol.validation=images"],
                  ["protocol.name=published", "protocol.validation=test"],
                  ["protocol.name=published", "protocol.validation=none", "train.selection=last"],
                  ["protocol.name=published", "protocol.validation=none", "train.selection=last",
                   "train.patience=5", "train.stop_on=train_loss"],
                  ["protocol.name=published-inter", "protocol.validation=test-other-subjects"],
                  ["protocol.name=published", "eval.main_gallery=centroid", "eval.similarity=dot"]]


@pytest.fixture(autouse=True)
def repository_defaults(monkeypatch):
    monkeypatch.delenv("BENCH_CONFIG_DIR", raising=False)


@pytest.mark.parametrize("key,value,fragment", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_each_rule_refuses_a_bad_value_naming_the_layer_and_key(key, value, fragment):
    item = f"{key}={value}"
    with pytest.raises(ConfigError) as err:
        resolve(None, sets=[item])
    message = str(err.value)
    # a rule between two keys names both layers, e.g. "configs/defaults.yaml, --set data.tmax=0.0: ..."
    assert re.match(rf"^(\S+defaults.yaml, )?--set {re.escape(item)}: ", message), message
    assert key in message and fragment in message, message
    assert "\n" not in message


def test_every_rule_is_exercised_and_every_harness_key_has_a_rule():
    ruled = {r.key for r in RULES} | {k for r in RULES for k in r.also}
    bad_keys = {k for k, _, _ in BAD}
    assert {r.key for r in RULES} <= bad_keys
    harness = {k for k in leaf_keys(yaml.safe_load(DEFAULTS.read_text())) if not k.startswith("method")}
    assert harness == ruled


def test_every_rule_is_documented_in_the_defaults_file():
    lines = DEFAULTS.read_text().splitlines()
    for rule in RULES:
        name = rule.key.split(".")[1]
        (line,) = [ln for ln in lines if re.match(rf"\s+{name}:", ln)]
        assert "#" in line, f"{rule.key} has no comment in configs/defaults.yaml"


@pytest.mark.parametrize("item", GOOD)
def test_allowed_values_pass(item):
    resolve(None, sets=[item])


@pytest.mark.parametrize("items,fragment", BAD_PUBLISHED, ids=[" ".join(i) for i, _ in BAD_PUBLISHED])
def test_published_protocol_rules_refuse_in_one_line(items, fragment):
    with pytest.raises(ConfigError) as err:
        resolve(None, sets=items)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("items", GOOD_PUBLISHED, ids=[" ".join(i) for i in GOOD_PUBLISHED])
def test_published_protocol_values_pass(items):
    resolve(None, sets=items)


def test_the_shipped_recipes_pass():
    from bench.registry import METHODS
    from bench.specs import resolve_config

    for method in METHODS.names():
        resolve_config(method)


def test_did_you_mean():
    assert did_you_mean("bset", ["last", "best_val"]) == " Did you mean best_val?"  # transposed letters
    assert did_you_mean("cos", ["constant", "cosine", "step"]) == " Did you mean cosine?"
    assert did_you_mean("adamw2", ["adam", "adamw", "sgd"]) == " Did you mean adamw?"
    assert did_you_mean("zzz", ["adam", "adamw", "sgd"]) == ""
    assert did_you_mean(3, ["adam"]) == ""


def test_the_message_names_the_layer_that_set_the_value(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  selection: lats\n")
    with pytest.raises(ConfigError, match=r"^\S*user.yaml: train.selection must be .*Did you mean last\?"):
        resolve(None, config_files=[user])
    # a later layer that sets another key does not take the blame
    with pytest.raises(ConfigError, match=r"^\S*user.yaml: train.selection"):
        resolve(None, config_files=[user], sets=["train.lr=0.1"])
    # a rule between keys names every layer involved, in layer order
    user.write_text("train:\n  warmup_epochs: 5\n")
    with pytest.raises(ConfigError, match=r"^\S*user.yaml, --set train.epochs=3: train.warmup_epochs must be"):
        resolve(None, config_files=[user], sets=["train.epochs=3"])


def test_a_method_recipe_is_named_as_the_source(tmp_path, monkeypatch):
    (tmp_path / "defaults.yaml").write_text(DEFAULTS.read_text())
    (tmp_path / "toy.yaml").write_text("train:\n  schedule: cosin\n")
    monkeypatch.setenv("BENCH_CONFIG_DIR", str(tmp_path))
    beside = {"find_recipe": lambda name: tmp_path / f"{name}.yaml"}
    with pytest.raises(ConfigError, match=r"toy.yaml: train.schedule must be one of constant, cosine, step; got "
                                          r"'cosin'. Did you mean cosine\?"):
        resolve("toy", **beside)
    (tmp_path / "defaults.yaml").write_text(DEFAULTS.read_text().replace("epochs: 50", "epochs: 0"))
    (tmp_path / "toy.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"defaults.yaml: train.epochs must be an integer >= 1; got 0"):
        resolve("toy", **beside)


def test_a_reduced_schema_is_checked_only_where_it_has_keys(tmp_path, monkeypatch):
    (tmp_path / "defaults.yaml").write_text("train:\n  epochs: 3\nmethod: {}\n")
    monkeypatch.setenv("BENCH_CONFIG_DIR", str(tmp_path))
    assert resolve(None)["train"] == {"epochs": 3}
    with pytest.raises(ConfigError, match="train.epochs must be an integer >= 1"):
        resolve(None, sets=["train.epochs=0"])


def test_kway_values_auto_is_the_ladder_below_the_test_size():
    assert kway_values("auto", 200) == [2, 4, 10, 50, 100]
    assert kway_values("auto", 201) == [2, 4, 10, 50, 100, 200]
    assert kway_values("auto", 40) == [2, 4, 10]
    assert kway_values("auto", 2) == []
    assert kway_values([50, 2], 200) == [2, 50] and kway_values([], 200) == []
    with pytest.raises(ConfigError, match=r"^eval.kway: 1000-way needs k < 200 test images"):
        kway_values([2, 1000], 200)
    with pytest.raises(ConfigError, match=r"^eval.kway: 200-way needs k < 200"):
        kway_values([200], 200)
    with pytest.raises(ConfigError, match=r"^eval.kway must be auto or a list"):
        kway_values([1], 200)


def test_kway_repeats_is_gone():
    assert resolve(None)["eval"]["kway"] == "auto"
    with pytest.raises(ConfigError, match="unknown config key 'eval.kway_repeats'"):
        resolve(None, sets=["eval.kway_repeats=5"])
