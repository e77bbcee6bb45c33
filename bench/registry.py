"""Registries: the table of contents of ThingsBench.

One :class:`Registry` per kind of component (methods, EEG encoders, feature extractors, datasets,
protocols). Components register with a decorator (``@register_method("nice", description=..., citation=...)``),
are listed with glob patterns (``list_methods("nice*")``) and built by name
(``create_method("nice", lr=1e-3)``), as in timm.

Built-in methods are found by importing every module of the ``baselines`` and ``methods`` packages from disk, so a
new file there is found without reinstalling; a third-party package declares its methods through the
``bench.methods`` entry-point group, and a single file can be loaded with ``--plugin path/to/file.py``. A method's
recipe is ``<name>.yaml`` beside the module that defines it (:func:`method_recipe`).
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.errors import UserError


class RegistryError(UserError, LookupError):
    """A name is unknown, or a name is registered twice."""


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    description: str
    citation: str
    origin: str


# Names become file and folder names (the recipe <name>.yaml, tune/<name>-best.yaml, report anchors), so each must be
# one harmless path component: ``..`` fits the character class, so it is refused on its own.
NAME_RULE = "[a-z0-9][a-z0-9._+-]* (lower case; no '..' and no '/')"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._+\-]*")


def check_name(kind: str, name: Any, origin: str) -> None:
    """Refuse a registered name that is not one safe path component, naming where it was registered."""
    if isinstance(name, str) and _NAME_RE.fullmatch(name) and ".." not in name and "/" not in name:
        return
    raise RegistryError(f"{origin}: {kind} name {name!r} is not allowed; a registered name must match {NAME_RULE}, "
                        f"e.g. 'my-method'")


def _origin(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return getattr(obj, "__module__", "?")


def package_modules(packages: tuple[str, ...]) -> list[str]:
    """Every module of ``packages`` and their sub-packages, listed from the files on disk (not install metadata)."""
    names = []
    for package in packages:
        root = importlib.import_module(package)
        # walk_packages imports sub-packages to list them and skips one that fails; discover() then imports each
        # listed name, so a broken built-in module still fails loudly
        names.extend(info.name for info in pkgutil.walk_packages(root.__path__, package + "."))
    return names


def suggest(name: str, choices: list[str]) -> str:
    """' Did you mean: a, b?' for the closest names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class Registry:
    """A named table of components.

    On first use the registry imports ``builtin_modules``, then every module of ``builtin_packages`` (walked on disk),
    then loads each entry point of ``group`` (e.g. ``bench.methods``); importing a module runs its ``@register_*``
    decorators. An entry point may also name an unregistered class
    or factory; it is then registered under the entry point's name, using its ``description``/``citation``
    attributes.
    """

    def __init__(self, kind: str, group: str | None = None, builtin_modules: tuple[str, ...] = (),
                 builtin_packages: tuple[str, ...] = ()):
        self.kind = kind
        self.group = group
        self.builtin_modules = builtin_modules
        self.builtin_packages = builtin_packages
        self._entries: dict[str, Entry] = {}
        self._lock = threading.RLock()
        self._discovered = False
        self._discovering = False

    # --- registration -----------------------------------------------------------------------------------------
    def register(self, name: str, *, description: str, citation: str = "") -> Callable:
        if not description:
            raise ValueError(f"{self.kind} {name!r} must declare a one-line description")

        def decorator(obj: Any) -> Any:
            self.add(Entry(name, obj, description.strip(), citation.strip(), _origin(obj)))
            return obj

        return decorator

    def add(self, entry: Entry) -> None:
        check_name(self.kind, entry.name, entry.origin)  # here, not in register(): the origin is known only now
        with self._lock:
            old = self._entries.get(entry.name)
            if old is not None and old.obj is not entry.obj:
                raise RegistryError(
                    f"{self.kind} {entry.name!r} is already registered (by {old.origin}); "
                    f"cannot register it again from {entry.origin}. Choose another name."
                )
            self._entries[entry.name] = entry

    # --- discovery --------------------------------------------------------------------------------------------
    def discover(self) -> None:
        """Import built-in modules and packages and load entry points, once."""
        with self._lock:
            if self._discovered or self._discovering:
                return
            self._discovering = True
            try:
                for module in (*self.builtin_modules, *package_modules(self.builtin_packages)):
                    importlib.import_module(module)
                if self.group:
                    for ep in importlib.metadata.entry_points(group=self.group):
                        self._load_entry_point(ep)
                self._discovered = True
            finally:
                self._discovering = False

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            raise RegistryError(f"entry point {ep.name!r} = {ep.value!r} in group {self.group} failed to load: {exc}") from exc
        if inspect.ismodule(obj) or any(e.obj is obj for e in self._entries.values()):
            return
        description = getattr(obj, "description", "") or (inspect.getdoc(obj) or "").split("\n")[0]
        self.add(Entry(ep.name, obj, description or f"{ep.value} (no description)",
                       getattr(obj, "citation", ""), _origin(obj)))

    # --- lookup -----------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def list(self, pattern: str = "*") -> list[str]:
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def get(self, name: str) -> Entry:
        self.discover()
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{suggest(name, known)} Known: {', '.join(known) or '(none)'}"
            ) from None

    def create(self, name: str, **overrides: Any) -> Any:
        """Build a component; ``None``-valued overrides are dropped so the component keeps its default (timm)."""
        kwargs = {k: v for k, v in overrides.items() if v is not None}
        return self.get(name).obj(**kwargs)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries


_plugins_loaded: dict[Path, Any] = {}


def load_plugin(path: str | Path) -> Any:
    """Import a single Python file so that its ``@register_*`` decorators run. Loading the same file twice is a no-op."""
    path = Path(path).expanduser().resolve()
    if path in _plugins_loaded:
        return _plugins_loaded[path]
    if not path.is_file() or path.suffix != ".py":
        raise RegistryError(f"plugin {path} is not a .py file")
    module_name = "bench_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    _plugins_loaded[path] = module
    return module


def loaded_plugins() -> list[str]:
    """Plugin files loaded in this process: Ray workers load the same files before building a method."""
    return [str(p) for p in _plugins_loaded]


# --- the five registries and their timm-style functions -----------------------------------------------------------
# built-in methods come from the package folders, third-party ones from the entry-point group
METHODS = Registry("method", group="bench.methods", builtin_packages=("bench.baselines", "bench.methods"))
ENCODERS = Registry("encoder", group="bench.encoders", builtin_modules=("bench.encoders",))
FEATURES = Registry("feature extractor", group="bench.features", builtin_modules=("bench.extract",))
DATASETS = Registry("dataset", group="bench.datasets", builtin_modules=("bench.data.dataset",))
PROTOCOLS = Registry("protocol", group="bench.protocols", builtin_modules=("bench.protocols",))

REGISTRIES: dict[str, Registry] = {
    "methods": METHODS, "encoders": ENCODERS, "features": FEATURES, "datasets": DATASETS, "protocols": PROTOCOLS,
}


def register_method(name: str, *, description: str, citation: str = "") -> Callable:
    return METHODS.register(name, description=description, citation=citation)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.list(pattern)


def create_method(name: str, **overrides: Any) -> Any:
    return METHODS.create(name, **overrides)


def recipe_path(entry: Entry) -> Path | None:
    """``<name>.yaml`` beside the module that defines the method (None when that module has no file).

    The path comes from the registered object's own source file, never from user input, so a plugin ships its recipe
    next to its code and nothing else on disk can be read as a recipe.
    """
    try:
        source = inspect.getsourcefile(entry.obj)
    except TypeError:  # built in C or made at run time: no folder to look in
        return None
    if not source:
        return None
    # defence in depth: add() already refused unsafe names, but an Entry can be built by hand
    check_name("method", entry.name, entry.origin)
    return Path(source).parent / f"{entry.name}.yaml"


def method_recipe(name: str) -> Path | None:
    """Where the recipe of the registered method ``name`` lives (it may not exist: then the method has none)."""
    return recipe_path(METHODS.get(name))


def register_encoder(name: str, *, description: str, citation: str = "") -> Callable:
    return ENCODERS.register(name, description=description, citation=citation)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.list(pattern)


def create_encoder(name: str, **overrides: Any) -> Any:
    return ENCODERS.create(name, **overrides)


def register_feature_extractor(name: str, *, description: str, citation: str = "") -> Callable:
    return FEATURES.register(name, description=description, citation=citation)


def list_feature_extractors(pattern: str = "*") -> list[str]:
    return FEATURES.list(pattern)


def register_dataset(name: str, *, description: str, citation: str = "") -> Callable:
    return DATASETS.register(name, description=description, citation=citation)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def register_protocol(name: str, *, description: str, citation: str = "") -> Callable:
    return PROTOCOLS.register(name, description=description, citation=citation)


def list_protocols(pattern: str = "*") -> list[str]:
    return PROTOCOLS.list(pattern)


def create_protocol(name: str, **overrides: Any) -> Any:
    return PROTOCOLS.create(name, **overrides)
