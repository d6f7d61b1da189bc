"""Errors a user can fix: the CLI prints them as one ``error: ...`` line with an exit code.

Anything else is a bug and keeps its traceback. Exit codes (README, "Bad input"):
2 configuration or arguments wrong, 3 the output folder cannot be written, 4 it is in use.
"""
from __future__ import annotations


class UserError(Exception):
    """A wrong flag, path or configuration value."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (unknown stage or backend, missing weights)."""


class MissingFileError(UserError, FileNotFoundError):
    """A configured file (weights, index) that is not there."""


class OutputError(UserError):
    """The output folder cannot be written (read-only, permissions, disk full)."""

    exit_code = 3


class OutputBusy(UserError):
    """Another build holds the output folder's lock."""

    exit_code = 4
