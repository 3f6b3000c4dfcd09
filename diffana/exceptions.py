"""diffana's error types: one line a user can act on."""

from __future__ import annotations


class DiffanaError(Exception):
    """Base of every error diffana raises on purpose.

    The message is one line that names where the problem is (file, YAML key path or
    branch), the value found and what was expected. The CLI prints it and exits with 2.
    """


class ConfigError(DiffanaError):
    """A configuration file is malformed or inconsistent."""


class DataError(DiffanaError):
    """An input file, tree or branch is missing or unreadable."""


class NumericalError(DiffanaError):
    """A NaN or inf appeared where a number was needed."""
