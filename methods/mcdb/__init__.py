"""MCDB (HMAVD): importing this package registers the ``mcdb`` method (see ``model.py`` and README.md, the method card)."""
from bench.methods.mcdb.model import DEFAULTS, MCDB

__all__ = ["DEFAULTS", "MCDB"]
