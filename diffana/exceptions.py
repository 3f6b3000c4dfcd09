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


class OutputError(DiffanaError, OSError):
    """A file or directory could not be written or created: the path and the operating
    system's reason (``runs/x/results.json: cannot write ([Errno 28] No space left on
    device)``). Also an ``OSError``, for code that catches those."""


class ResumableError(DiffanaError):
    """The run stopped for a cause outside it, and can continue once the cause is gone.

    ``diffana run`` writes the checkpoint of the last finished step (``resume``, set where
    the optimiser stopped) and says how to continue with ``--resume``.
    """

    resume = None


class InputChanged(ResumableError):
    """An input file changed (size, modification time, UUID or entries) under a run."""


class ExecutorLost(ResumableError):
    """The connection to the Dask scheduler was lost."""
