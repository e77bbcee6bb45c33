"""A marker base class for errors the user can fix: the CLI prints their message as one line and exits 1.

Library modules derive their error classes from it (``class SweepError(UserError, ValueError)``), so the CLI does not
have to import every module at start-up to know which exceptions are the user's to fix.
"""


class UserError(Exception):
    pass


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the source and the key (kept here so the config
    modules, which all raise it, need not import each other)."""
