"""What each harness config value may hold: one declarative table, checked when a config is resolved.

:func:`bench.config.resolve` calls :func:`check` on the fully layered config, so ``bench train``, ``bench run`` and
``bench tune`` refuse a bad value before any data is read, with one line that names the layer that set it::

    --set train.selection=bset: train.selection must be one of best_val, last; got 'bset'. Did you mean best_val?

A rule reads one key (and, for rules between keys such as ``warmup_epochs < epochs``, the keys in ``also``). Keys
missing from the config are skipped: a test may resolve a reduced schema. The ``method:`` section is the method's to
check (its values already have their defaults' types). Checks that need the dataset (k < number of test images,
galleries present in the feature file) are :mod:`bench.preflight`'s. ``configs/defaults.yaml`` documents every rule.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from bench.errors import ConfigError

#: ``eval.kway: auto``: the k-way ladder of ATM (Li et al. 2024), kept where k < the number of test images
KWAY_LADDER = (2, 4, 10, 50, 100, 200)
GALLERIES = ("image", "text", "centroid")
#: ``protocol.validation``: what the trainer validates (and selects / stops) on. Only ``concepts`` is honest; the
#: others replay published procedures and are allowed only under a protocol that declares them (bench/protocols.py)
VALIDATIONS = ("concepts", "images", "none", "test", "test-other-subjects")
#: validation kinds whose numbers come from the test partition: a run using one is recorded ``test_selected``
TEST_SELECTED_VALIDATIONS = ("test", "test-other-subjects")
MAIN_GALLERIES = ("image", "centroid")
SIMILARITIES = ("cosine", "dot")
STOP_SIGNALS = ("val_top1", "train_loss")


@dataclass(frozen=True)
class Rule:
    """``key`` must be ``allowed`` (in words); ``ok`` decides, ``hint`` may add a suggestion to the message."""

    key: str
    allowed: str | Callable[[], str]
    ok: Callable[..., bool]
    hint: Callable[..., str] = lambda *values: ""
    also: tuple[str, ...] = ()  # further keys the rule compares with; their values follow the key's in ok/hint

    def describe(self) -> str:
        return self.allowed() if callable(self.allowed) else self.allowed


# --- value tests ---------------------------------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML `true` is an int to Python


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def did_you_mean(value: Any, options: Sequence[str]) -> str:
    """' Did you mean X?' for the closest option, or ''. A typo such as ``bset`` is scored against the option's prefix
    of the same length too, so transposed letters find ``best_val`` rather than the equally short ``last``."""
    if not isinstance(value, str) or not options:
        return ""

    def score(option: str) -> float:
        whole = difflib.SequenceMatcher(None, value, option).ratio()
        return max(whole, difflib.SequenceMatcher(None, value, option[: len(value)]).ratio())

    best = max(options, key=score)  # max keeps the first of equal scores: the options' documented order
    return f" Did you mean {best}?" if score(best) >= 0.5 else ""


# --- rule builders -------------------------------------------------------------------------------------------------
def one_of(key: str, options: Sequence[str] | Callable[[], Sequence[str]]) -> Rule:
    """A name among ``options`` (a callable is asked at check time: registries fill up as plugins load)."""
    names = options if callable(options) else (lambda: options)
    return Rule(key, lambda: "one of " + ", ".join(names()), lambda v: isinstance(v, str) and v in names(),
                lambda v: did_you_mean(v, list(names())))


def integer(key: str, at_least: int, nullable: bool = False) -> Rule:
    words = f"an integer >= {at_least}"
    return Rule(key, f"null or {words}" if nullable else words,
                lambda v: (nullable and v is None) or (is_int(v) and v >= at_least))


def number(key: str, words: str = "", test: Callable[[float], bool] = lambda v: True, nullable: bool = False) -> Rule:
    """A real number passing ``test``, described by ``words`` (e.g. ``"> 0"``)."""
    described = f"a number {words}".strip()
    return Rule(key, f"null or {described}" if nullable else described,
                lambda v: (nullable and v is None) or (is_number(v) and test(v)))


def flag(key: str) -> Rule:
    return Rule(key, "true or false", lambda v: isinstance(v, bool))


def text(key: str, nullable: bool = False) -> Rule:
    return Rule(key, "null or a string" if nullable else "a string",
                lambda v: (nullable and v is None) or isinstance(v, str))


# --- the values that are more than a name or a number ------------------------------------------------------------
def _betas_ok(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(is_number(b) and 0 <= b < 1 for b in value)


def kway_ok(value: Any) -> bool:
    if value == "auto":
        return True
    return (isinstance(value, list) and all(is_int(k) and k >= 2 for k in value)
            and len(set(value)) == len(value))


def _galleries_ok(value: Any) -> bool:
    return (isinstance(value, list) and all(isinstance(g, str) and g in GALLERIES for g in value)
            and len(set(value)) == len(value) and "image" in value)


def _galleries_hint(value: Any) -> str:
    unknown = [g for g in value if g not in GALLERIES] if isinstance(value, list) else []
    if unknown:
        return did_you_mean(unknown[0], GALLERIES)
    if isinstance(value, list) and "image" not in value:
        return " The image gallery is always scored (it gives the main number): list it, e.g. [image, text]."
    return ""


def _channel_options() -> tuple[dict, tuple[str, ...]]:
    from bench.data.channels import PRESETS, THINGS_63  # imported late: bench.data.channels imports bench.config

    return PRESETS, THINGS_63


def _channel_names(value: Any) -> list[str] | None:
    """The channel names ``value`` lists (a list, or ``"O1,Oz,O2"`` as typed on the command line), else None."""
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    if isinstance(value, list) and all(isinstance(n, str) for n in value):
        return value
    return None


def _channels_ok(value: Any) -> bool:
    presets, names63 = _channel_options()
    if isinstance(value, str) and value in presets:
        return True
    names = _channel_names(value)
    return bool(names) and all(n in names63 for n in names) and len(set(names)) == len(names)


def _channels_hint(value: Any) -> str:
    presets, names63 = _channel_options()
    unknown = [n for n in (_channel_names(value) or []) if n not in names63]
    return did_you_mean(unknown[0], [*presets, *names63]) if unknown else ""


def _prompt_ok(value: Any) -> bool:
    if not isinstance(value, str) or "{concept}" not in value:
        return False
    try:
        value.format(concept="x")
    except (KeyError, IndexError, ValueError):  # other fields or unbalanced braces
        return False
    return True


def _protocol_names() -> list[str]:
    from bench.registry import PROTOCOLS  # plugins may register protocols after this module is imported

    return PROTOCOLS.names()


def _protocol_attr(name: Any, attr: str, default: Any) -> Any:
    """A class attribute of the registered protocol ``name`` (``default`` for a name the protocol.name rule refuses)."""
    from bench.registry import PROTOCOLS

    return getattr(PROTOCOLS.get(name).obj, attr, default) if name in _protocol_names() else default


def _validation_allowed(validation: Any, protocol: Any) -> bool:
    return validation in _protocol_attr(protocol, "validations", VALIDATIONS)


def _validation_words(validation: Any, protocol: Any) -> str:
    allowed = _protocol_attr(protocol, "validations", VALIDATIONS)
    return f" Under protocol {protocol} it may be {', '.join(allowed)}" + (
        " (paper-specific and test-selected validation replay published numbers: --protocol published or "
        "published-inter)." if tuple(allowed) == ("concepts",) else ".")


def _published_only(value: Any, protocol: Any, honest_value: str) -> bool:
    return value == honest_value or bool(_protocol_attr(protocol, "honest_counterpart", None))


def _synthetic_presets() -> list[str]:
    from bench.data.synthetic import PRESETS

    return list(PRESETS)


# --- the table -----------------------------------------------------------------------------------------------------
RULES: tuple[Rule, ...] = (
    text("data.root", nullable=True),
    one_of("data.synthetic_preset", _synthetic_presets),
    Rule("data.channels", "all63, occipital17, or a list of distinct THINGS-EEG channel names", _channels_ok,
         _channels_hint),
    number("data.tmin"),
    number("data.tmax"),
    Rule("data.tmax", "larger than data.tmin", lambda tmax, tmin: tmax > tmin, also=("data.tmin",)),
    flag("data.train_average"),
    integer("data.test_repetitions", 1, nullable=True),
    text("data.features", nullable=True),
    Rule("data.prompt_template", "a string with {concept} and no other braces", _prompt_ok),
    flag("data.prompt_underscores_to_spaces"),

    one_of("protocol.name", _protocol_names),
    one_of("protocol.validation", VALIDATIONS),
    Rule("protocol.validation", "a validation kind the protocol declares", _validation_allowed, _validation_words,
         also=("protocol.name",)),
    Rule("protocol.validation", "none only with train.selection last (no validation: nothing to select on)",
         lambda validation, selection: validation != "none" or selection == "last", also=("train.selection",)),
    integer("protocol.val_concepts", 1),
    integer("protocol.val_images", 1),
    integer("protocol.val_seed", 0),

    integer("train.epochs", 1),
    integer("train.batch_size", 1),
    one_of("train.optimizer", ("adam", "adamw", "sgd")),
    number("train.lr", "> 0", lambda v: v > 0),
    number("train.weight_decay", ">= 0", lambda v: v >= 0),
    Rule("train.betas", "two numbers in [0, 1), e.g. [0.9, 0.999]", _betas_ok),
    number("train.momentum", "in [0, 1)", lambda v: 0 <= v < 1),
    one_of("train.schedule", ("constant", "cosine", "step")),
    integer("train.warmup_epochs", 0),
    Rule("train.warmup_epochs", "smaller than train.epochs (warm-up must end before training does)",
         lambda warmup, epochs: warmup < epochs, also=("train.epochs",)),
    integer("train.step_size", 1),
    number("train.step_gamma", "in (0, 1]", lambda v: 0 < v <= 1),
    number("train.grad_clip", "> 0", lambda v: v > 0, nullable=True),
    integer("train.grad_accum", 1),
    one_of("train.selection", ("best_val", "last")),
    integer("train.patience", 1, nullable=True),
    one_of("train.stop_on", STOP_SIGNALS),
    Rule("train.stop_on", "train_loss when there is no validation set and train.patience is set",
         lambda stop_on, validation, patience: stop_on != "val_top1" or validation != "none" or patience is None,
         also=("protocol.validation", "train.patience")),
    number("train.min_delta", ">= 0", lambda v: v >= 0),
    integer("train.val_every", 1),
    one_of("train.mixed_precision", ("auto", "no", "bf16", "fp16")),
    flag("train.compile"),
    integer("train.num_threads", 1, nullable=True),
    flag("train.save_model"),

    Rule("eval.kway", "auto or a list of distinct integers >= 2", kway_ok),
    Rule("eval.galleries", "a list of distinct names among image, text, centroid that includes image",
         _galleries_ok, _galleries_hint),
    one_of("eval.main_gallery", MAIN_GALLERIES),
    Rule("eval.main_gallery", "image under an honest protocol (concept centres are NICE's published scoring: "
                              "--protocol published; eval.galleries: [image, centroid] reports them beside)",
         lambda main, protocol: _published_only(main, protocol, "image"), also=("protocol.name",)),
    one_of("eval.similarity", SIMILARITIES),
    Rule("eval.similarity", "cosine under an honest protocol (the unnormalised dot product is NICE's published "
                            "scoring: --protocol published)",
         lambda similarity, protocol: _published_only(similarity, protocol, "cosine"), also=("protocol.name",)),
)


# --- checking ------------------------------------------------------------------------------------------------------
_MISSING = object()


def lookup(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def violation(rule: Rule, cfg: Mapping) -> str | None:
    """The message for ``rule`` on ``cfg`` (without its source), or None when the value is allowed or absent."""
    values = [lookup(cfg, k) for k in (rule.key, *rule.also)]
    if any(v is _MISSING for v in values) or rule.ok(*values):
        return None
    got = repr(values[0]) if not rule.also else ", ".join(f"{k}={v!r}" for k, v in zip((rule.key, *rule.also), values))
    return f"{rule.key} must be {rule.describe()}; got {got}.{rule.hint(*values)}"


def source_of(keys: Sequence[str], origin: Mapping[str, str], layers: Sequence[str] = ()) -> str:
    """The layer(s) that last set ``keys``, in layer order (``origin``: dotted key → the layer that last set it)."""
    sources = list(dict.fromkeys(origin.get(key, "config") for key in keys))
    return ", ".join(sorted(sources, key=lambda s: list(layers).index(s) if s in layers else -1))


def check(cfg: Mapping, origin: Mapping[str, str] | None = None, layers: Sequence[str] = ()) -> None:
    """Raise ConfigError for the first value no rule allows, naming the layer that set it (see :func:`source_of`)."""
    for rule in RULES:
        message = violation(rule, cfg)
        if message is not None:
            raise ConfigError(f"{source_of((rule.key, *rule.also), origin or {}, layers)}: {message}")


def kway_values(cfg_value: Any, n_test: int) -> list[int]:
    """The k of the k-way accuracies on a test set of ``n_test`` images, ascending.

    ``auto`` is the ATM ladder (2, 4, 10, 50, 100, 200) restricted to k < n_test; every k of an explicit list must be
    < n_test (k = n_test would repeat the n-way top-1, a larger k has not enough distractors). Raises ConfigError.
    """
    if not kway_ok(cfg_value):
        raise ConfigError(f"eval.kway must be auto or a list of distinct integers >= 2; got {cfg_value!r}")
    if cfg_value == "auto":
        return [k for k in KWAY_LADDER if k < n_test]
    too_big = [k for k in cfg_value if k >= n_test]
    if too_big:
        raise ConfigError(f"eval.kway: {max(too_big)}-way needs k < {n_test} test images; choose values below "
                          f"{n_test} or auto")
    return sorted(cfg_value)
