"""Errors a user can fix. The tools print these in one line (``error: ...``, exit code 2); any
other exception is a bug in our code and keeps its traceback."""

from __future__ import annotations


class UserError(ValueError):
    """A wrong setting, file or dataset, named in the message (a ``ValueError``, so callers
    catching ``ValueError`` keep working)."""


class ConfigError(UserError):
    """An unknown config key, a wrong type or a value out of range; the message names the key."""
