"""Configuration: YAML layers, ``--set`` overrides, ``extends``, validation with suggestions.

Layers, lowest first::

    configs/defaults.yaml   harness sections (data, protocol, train, eval) and an empty ``method`` section
    method defaults         the hyper-parameters the method class declares (its ``defaults`` dict): the ``method``
                            section, written only there
    the method's recipe     ``<method>.yaml`` beside the module that registers the method (``baselines/nice.yaml``,
                            ``methods/mcdb/mcdb.yaml``, a plugin's own folder): the published recipe, setting only
                            what differs from the layers below (may touch any section); then, only when the
                            resolved ``data.root`` is null (the built-in synthetic dataset), ``<method>.synthetic.yaml``
                            beside it if the method ships one: the recipe resized for that small data on a CPU
    the protocol layer      ``<method>.<protocol>.yaml`` beside the recipe when the resolved ``protocol.name`` is
                            ``<protocol>`` (``baselines/nice.published.yaml``, ``baselines/eegproject.inter.yaml``):
                            how the method's paper ran that protocol. Found by ``find_protocol_layer``, which follows
                            the recipe's ``extends`` to a parent method the method derives from: the parent's layer
                            first, then the method's own (NICE-SA gets ``nice.published.yaml``, then
                            ``nice-sa.published.yaml``). They sit between the recipe and the synthetic recipe.
    --config FILE           the user's file(s), in order
    --set a.b=c             repeatable, last wins

A recipe or ``--config`` file may start with ``extends: <method>``: that method's recipe (and its own parents) is
applied first, then the file's keys, so a shared block (NICE's training recipe) is written once.

The key set of the first two layers is the schema: a later layer may change values but never add keys, and an
unknown key is rejected with the nearest valid key suggested. Each value keeps its default's type; the resolved
config is then checked against the rule table of :mod:`bench.config_rules` (ranges, choices, rules between keys),
and a bad value is refused naming the layer that set it. The fully resolved config is what a run records.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from bench.package import resource_dir
from bench.config_rules import check
from bench.errors import ConfigError, UserError


#: harness keys whose value may be a name or a list (``eval.kway: auto | [2, 4]``, ``data.channels: all63 | [O1, Oz]``):
#: they keep no single type, and their rules in bench.config_rules check them instead
MULTI_TYPE_KEYS = frozenset({"data.channels", "eval.kway"})


def config_dir() -> Path:
    """Where ``defaults.yaml`` lives: ``BENCH_CONFIG_DIR``, else the ``configs`` shipped with the package (the
    repository's ``configs/`` in a checkout)."""
    return Path(os.environ["BENCH_CONFIG_DIR"]) if os.environ.get("BENCH_CONFIG_DIR") else resource_dir("configs")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, found {type(data).__name__}")
    return data


def _flat_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys.append(prefix + k)
        if isinstance(v, Mapping):
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def _coerce(key: str, default: Any, value: Any, source: str) -> Any:
    """Keep the type of the schema's default; YAML reads ``3e-4`` as a string, so numbers given as text are parsed."""
    if value is None or default is None or key in MULTI_TYPE_KEYS:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} expects true/false, got {value!r}")
    if isinstance(default, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise ConfigError(f"{source}: {key} expects a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} expects a number, got {value!r}")
        return float(value) if isinstance(default, float) else value
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{source}: {key} expects a string, got {value!r}")
    if isinstance(default, list) and not isinstance(value, list):
        raise ConfigError(f"{source}: {key} expects a list, got {value!r}")
    return value


def merge(base: dict, override: Mapping, source: str, *, schema: Mapping | None = None, prefix: str = "") -> dict:
    """Return ``base`` updated by ``override``; every key of ``override`` must exist in ``schema`` (default: base)."""
    schema = base if schema is None else schema
    out = copy.deepcopy(base)
    for key, value in override.items():
        full = prefix + str(key)
        if key not in schema:
            valid = _flat_keys(schema, prefix)
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.4)
            hint = f" Did you mean {close[0]}?" if close else f" Valid keys here: {', '.join(sorted(schema)) or '(none)'}."
            raise ConfigError(f"{source}: unknown config key {full!r}.{hint}")
        if isinstance(schema[key], Mapping) and schema[key] and not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {full} is a section; set its keys ({full}.<key>) instead of {value!r}")
        if isinstance(value, Mapping) and isinstance(schema[key], Mapping) and schema[key]:
            out[key] = merge(out.get(key) or {}, value, source, schema=schema[key], prefix=full + ".")
        else:
            out[key] = _coerce(full, schema[key], copy.deepcopy(value), source)
    return out


def leaf_keys(tree: Mapping, prefix: str = "") -> list[str]:
    """The dotted keys whose values ``tree`` sets (a non-empty mapping is a section, not a value)."""
    keys = []
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            keys.extend(leaf_keys(v, prefix + str(k) + "."))
        else:
            keys.append(prefix + str(k))
    return keys


def check_key(cfg: Mapping, dotted: str, source: str) -> None:
    """Raise the unknown-key error (with a suggestion) unless ``dotted`` names a key of ``cfg``."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            close = difflib.get_close_matches(dotted, _flat_keys(cfg), n=1, cutoff=0.4)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{source}: unknown config key {dotted!r}.{hint}")
        node = node[part]


def parse_set(item: str) -> dict:
    """``"train.lr=1e-3"`` → ``{"train": {"lr": 1e-3}}`` (the value is read as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    tree: dict = {}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


#: finds a method's recipe file by method name (None: the method has none); :func:`bench.registry.method_recipe`
RecipeFinder = Callable[[str], "Path | None"]


def _parent_recipe(path: Path, parent: Any, find_recipe: RecipeFinder | None) -> Path:
    """The file that ``path``'s ``extends: <parent>`` names, or a ConfigError naming ``path``."""
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends expects a method name such as 'nice', found {parent!r}")
    if find_recipe is None:
        raise ConfigError(f"{path}: extends: {parent!r} cannot be followed here (no method registry to find it in)")
    try:
        found = find_recipe(parent)
    except UserError as exc:  # an unknown method: the registry's message suggests the nearest name
        raise ConfigError(f"{path}: extends: {exc}") from exc
    if found is None or not Path(found).is_file():
        raise ConfigError(f"{path}: extends: method {parent!r} has no recipe file to extend"
                          f"{f' (expected {found})' if found else ''}")
    return Path(found)


def recipe_layers(path: str | Path, find_recipe: RecipeFinder | None = None,
                  _chain: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """``(layer, source)`` pairs of a recipe file, parents first: ``extends: <method>`` applies that method's recipe."""
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{_chain[-1]}: extends makes a cycle ({cycle}); expected a chain that ends in a recipe "
                          f"without extends")
    data = load_yaml(path)
    if "extends" not in data:
        return [(data, str(path))]
    parent = _parent_recipe(path, data.pop("extends"), find_recipe)
    return [*recipe_layers(parent, find_recipe, (*_chain, path.resolve())), (data, str(path))]


def synthetic_recipe(recipe: Path) -> Path:
    """``<name>.synthetic.yaml`` beside ``<name>.yaml``: the recipe resized for the built-in synthetic dataset."""
    return recipe.with_name(f"{recipe.stem}.synthetic.yaml")


#: finds a method's protocol layers: (method, protocol name) → its ``<name>.<protocol>.yaml`` files, parents first
#: (empty: it has none); :func:`bench.specs.protocol_recipe`
ProtocolLayerFinder = Callable[[str, str], "list[Path]"]

#: keys a protocol layer may not set: the layer is chosen by ``protocol.name`` and the synthetic recipe by ``data.root``
PROTOCOL_LAYER_FORBIDDEN = ("protocol.name", "data.root")


def method_recipe_files(method: str | None, find_recipe: RecipeFinder | None, synthetic: bool,
                        protocol_layers: Sequence[Path] = ()) -> list[Path]:
    """The method's recipe file(s) to layer: ``<name>.yaml``, then its protocol layers (``<name>.<protocol>.yaml``,
    parents' first) when they apply, then ``<name>.synthetic.yaml`` when ``synthetic``."""
    recipe = find_recipe(method) if method and find_recipe else None
    if recipe is None:
        return []
    recipe = Path(recipe)
    small = synthetic_recipe(recipe)
    return [f for f in (recipe, *protocol_layers, *([small] if synthetic else [])) if f.is_file()]


def protocol_layers(method: str | None, protocol: Any, find_protocol_layer: ProtocolLayerFinder | None
                    ) -> list[Path]:
    """The protocol layers that apply to ``method`` under ``protocol`` (each checked), parents' first; may be empty."""
    if not method or find_protocol_layer is None or not isinstance(protocol, str):
        return []
    layers = [Path(f) for f in find_protocol_layer(method, protocol) if Path(f).is_file()]
    for found in layers:
        data = load_yaml(found)
        if "extends" in data:
            raise ConfigError(f"{found}: a protocol layer applies over the method's recipe and cannot use extends")
        bad = [k for k in leaf_keys(data) if k in PROTOCOL_LAYER_FORBIDDEN]
        if bad:
            raise ConfigError(f"{found}: a protocol layer must not set {bad[0]} (the layer is chosen by protocol.name "
                              f"and the synthetic recipe by data.root)")
    return layers


def applied_recipes(method: str, cfg: Mapping, find_recipe: RecipeFinder,
                    find_protocol_layer: ProtocolLayerFinder | None = None) -> list[str]:
    """Every recipe file layered into ``cfg`` (``extends`` parents first, then the protocol layer, then the synthetic
    recipe), as :func:`resolve` chose them."""
    layers = protocol_layers(method, cfg.get("protocol", {}).get("name"), find_protocol_layer)
    files = method_recipe_files(method, find_recipe, cfg.get("data", {}).get("root") is None, layers)
    return [source for f in files for _, source in recipe_layers(f, find_recipe)]


def _layered(method, method_defaults, files, sets, find_recipe) -> tuple[dict, dict, list[str]]:
    """(config, dotted key → the layer that last set it, layer sources) of the layers in order, unchecked."""
    cdir = config_dir()
    cfg = load_yaml(cdir / "defaults.yaml")
    cfg.setdefault("method", {})
    origin = dict.fromkeys(leaf_keys(cfg), str(cdir / "defaults.yaml"))
    layers = [str(cdir / "defaults.yaml")]

    def apply(layer: Mapping, source: str) -> None:
        nonlocal cfg
        cfg = merge(cfg, layer, source)
        origin.update(dict.fromkeys(leaf_keys(layer), source))
        layers.append(source)

    if method_defaults:
        cfg["method"] = {**cfg["method"], **copy.deepcopy(dict(method_defaults))}
    for f in files:
        for layer, source in recipe_layers(f, find_recipe):
            layer.pop("method_name", None)  # a saved resolved config (e.g. from `bench tune`) can be fed back
            apply(layer, source)
    if method:
        cfg["method_name"] = method
    for item in sets:
        apply(parse_set(item), f"--set {item}")
    return cfg, origin, layers


def resolve(
    method: str | None = None,
    method_defaults: Mapping | None = None,
    config_files: Iterable[str | Path] = (),
    sets: Iterable[str] = (),
    find_recipe: RecipeFinder | None = None,
    find_protocol_layer: ProtocolLayerFinder | None = None,
) -> dict:
    """The fully resolved and checked config for ``method`` (see the module docstring for the layer order).

    ``find_recipe`` maps a method name to its recipe file; it finds ``method``'s own recipe and every ``extends``.
    The recipe depends on the data: ``<name>.synthetic.yaml`` is layered over ``<name>.yaml`` only when the resolved
    ``data.root`` is null (the built-in synthetic dataset). data.root is usually set by a later layer (``--config``,
    ``--set``, ``--data-root``), so the layers are resolved once with the recipe alone and, if the root comes out
    null and the method ships a synthetic recipe, once more with it. The protocol layer (``find_protocol_layer``)
    follows the resolved ``protocol.name`` the same way; it may set neither ``protocol.name`` nor ``data.root``, so
    neither choice can contradict itself.
    """
    config_files, sets = list(config_files), list(sets)

    def layered(synthetic: bool, layers: Sequence[Path]) -> tuple[dict, dict, list[str]]:
        files = [*method_recipe_files(method, find_recipe, synthetic, layers), *config_files]
        return _layered(method, method_defaults, files, sets, find_recipe)

    cfg, origin, layers = layered(False, ())
    protocol_files = protocol_layers(method, cfg.get("protocol", {}).get("name"), find_protocol_layer)
    if protocol_files:
        cfg, origin, layers = layered(False, protocol_files)
    has_synthetic = len(method_recipe_files(method, find_recipe, True)) > len(method_recipe_files(method, find_recipe,
                                                                                                  False))
    if cfg.get("data", {}).get("root") is None and has_synthetic:
        cfg, origin, layers = layered(True, protocol_files)
        if cfg["data"]["root"] is not None:  # the synthetic recipe itself set it: the choice would contradict itself
            raise ConfigError(f"{origin['data.root']}: a synthetic recipe applies only when data.root is null, so it "
                              f"must not set data.root")
    check(cfg, origin, layers)
    return cfg


def canonical_json(obj: Any) -> str:
    """A stable text form for hashing: sorted keys, no whitespace, floats as Python writes them."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
