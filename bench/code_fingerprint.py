"""The fingerprint of the code that produces a run's numbers (benchopt: a cached result is tied to its code).

It covers the method's own source (the module of its class and of every base class, the modules they import from
``baselines``, ``methods``, ``bench.encoders`` and ``bench.losses``, the encoders its config names, and ``--plugin``
files), the harness's :data:`bench.evaluate.SCORING_VERSION` and the protocol's version. A completed record whose
fingerprint differs from the current code's is stale: ``bench run``/``bench train`` recompute it and say why.
Harness code outside this list (trainer, loaders) changes numbers only through a bumped scoring or protocol version.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: modules whose source belongs to a method (besides plugin files)
METHOD_PACKAGES = ("bench.baselines", "bench.methods", "bench.encoders", "bench.losses")
PLUGIN_PREFIX = "bench_plugin_"


@dataclass(frozen=True)
class CodeFingerprint:
    digest: str                                  # short hex; what records carry and the store compares
    scoring_version: int
    protocol_version: int
    modules: dict[str, str] = field(default_factory=dict)   # display name → sha256 of the file (12 hex)

    def to_dict(self) -> dict:
        return {"digest": self.digest, "scoring_version": self.scoring_version,
                "protocol_version": self.protocol_version, "modules": dict(self.modules)}

    def changes_from(self, old: dict | None) -> str:
        """What differs from an older fingerprint block, in words (for the 'stale records' message)."""
        if not old:
            return "record made before code fingerprints"
        parts = []
        if old.get("scoring_version") != self.scoring_version:
            parts.append(f"scoring protocol v{old.get('scoring_version')} -> v{self.scoring_version}")
        if old.get("protocol_version") != self.protocol_version:
            parts.append(f"protocol v{old.get('protocol_version')} -> v{self.protocol_version}")
        before = old.get("modules") or {}
        changed = sorted(n for n in set(before) | set(self.modules) if before.get(n) != self.modules.get(n))
        if changed:
            parts.append("code of " + ", ".join(changed))
        return "; ".join(parts) or "code changed"


def _belongs_to_method(name: str) -> bool:
    return name.startswith(PLUGIN_PREFIX) or any(name == p or name.startswith(p + ".") for p in METHOD_PACKAGES)


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    if module is None:
        try:
            module = importlib.import_module(name)
        except ImportError:
            return None
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def _display_name(name: str, path: Path) -> str:
    return f"plugin:{path.name}" if name.startswith(PLUGIN_PREFIX) else name


def _imports_of(name: str, path: Path) -> set[str]:
    """Modules named by the import statements of ``path``; ``from pkg import Obj`` counts as Obj's own module."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            if not _belongs_to_method(base):
                out.add(base)
                continue
            parent = sys.modules.get(base) or importlib.import_module(base)
            for alias in node.names:  # a package's re-export counts as the module that defines it
                obj = getattr(parent, alias.name, None)
                out.add(obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or base)
    return out


def source_modules(roots: set[str]) -> dict[str, Path]:
    """The method-owned modules reachable from ``roots`` through imports (name → file)."""
    todo, found = [r for r in roots if _belongs_to_method(r)], {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(name)
        if path is None or path.suffix != ".py":
            continue
        found[name] = path
        todo.extend(m for m in _imports_of(name, path) if _belongs_to_method(m) and m not in found)
    return found


def _roots(method: str, method_config: dict) -> set[str]:
    from bench.registry import ENCODERS, METHODS

    obj = METHODS.get(method).obj
    roots = {c.__module__ for c in getattr(obj, "__mro__", (obj,))}
    roots.add(getattr(obj, "__module__", ""))
    encoders = set(ENCODERS.names())
    for value in method_config.values():
        if isinstance(value, str) and value in encoders:
            roots.add(ENCODERS.get(value).obj.__module__)
    return roots


def fingerprint_method(method: str, method_config: dict, protocol: str) -> CodeFingerprint:
    """The current code's fingerprint for runs of ``method`` (configured as ``method_config``) under ``protocol``."""
    from bench.evaluate import SCORING_VERSION
    from bench.registry import PROTOCOLS

    modules = {_display_name(name, path): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
               for name, path in source_modules(_roots(method, method_config)).items()}
    protocol_version = int(PROTOCOLS.get(protocol).obj.version)
    payload = repr((SCORING_VERSION, protocol_version, sorted(modules.items())))
    return CodeFingerprint(digest=hashlib.sha256(payload.encode()).hexdigest()[:16], scoring_version=SCORING_VERSION,
                           protocol_version=protocol_version, modules=dict(sorted(modules.items())))
