"""What this installation of ThingsBench is: its version, whether it runs from a source checkout, and where the
data it ships (``configs``) lies. Standard library only: ``bench/__init__.py`` and the CLI's start-up import it."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.2.0"

_HERE = Path(__file__).resolve().parent
#: the source checkout this package runs from, or None when it is installed (from a wheel)
CHECKOUT: Path | None = _HERE.parent if (_HERE.parent / "baselines" / "__init__.py").is_file() \
    and not (_HERE / "baselines").is_dir() else None
#: import names of the repository's top-level packages → their folders in a checkout
MAPPED_PACKAGES = {"bench.baselines": "baselines", "bench.methods": "methods"}


def resource_dir(name: str) -> Path:
    """A data folder that ships with the package (``configs``): ``bench/<name>`` installed, ``<checkout>/<name>``
    in a source checkout."""
    return (CHECKOUT / name) if CHECKOUT is not None else _HERE / name
