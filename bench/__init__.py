"""ThingsBench: a benchmark harness for zero-shot EEG-to-image decoding on THINGS-EEG.

Everything installs under this one import name: the repository's top-level ``baselines/``, ``methods/`` and
``configs/`` folders are ``bench.baselines``, ``bench.methods`` and ``bench/configs`` in the wheel (see
``[tool.setuptools]`` in pyproject.toml), so nothing generic like ``methods`` lands in site-packages. In a source
checkout those folders stay beside ``bench/``; :class:`_CheckoutFinder` gives them the same import names.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from bench.package import CHECKOUT, MAPPED_PACKAGES, __version__


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``bench.baselines`` and ``bench.methods`` at the top of a source checkout (their sub-modules then
    resolve through the package's ``__path__`` as usual)."""

    def find_spec(self, fullname, path=None, target=None):
        folder = MAPPED_PACKAGES.get(fullname)
        if folder is None or CHECKOUT is None:
            return None
        init = CHECKOUT / folder / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init,
                                                      submodule_search_locations=[str(init.parent)])


if CHECKOUT is not None and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutFinder())


def __getattr__(name: str):
    # lazy: `import bench` (the CLI's start-up) must not pay for torch; bench.load_run imports it on first use
    if name == "load_run":
        from bench.saved_model import load_run

        return load_run
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
