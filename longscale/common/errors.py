"""Base error types: a `LongscaleError` is a user-facing failure (bad input, config or data), not a bug.

Each package subclasses it for its own errors (datafactory's DocumentError, finetune's DataError, ...); the
commands layer maps the whole family to one exit code in one place (longscale/commands/main.py), so no
library needs to know about exit codes or re-wrap another package's errors.
"""
from __future__ import annotations


class LongscaleError(Exception):
    """A failure the user can fix (the message says what and where); commands print it and exit with 2."""


class ConfigError(LongscaleError, ValueError):
    """A configuration could not be read or validated; the message names the file or field."""
