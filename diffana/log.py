"""What diffana tells the user while it works: the ``diffana`` :mod:`logging` logger.

Library code never prints; it logs to ``logging.getLogger("diffana")`` — a line when a long
phase starts and one with its elapsed time when it ends (INFO), the physics warnings as they
are found (WARNING), details (DEBUG). Used from Python, diffana shows only warnings (Python's
last-resort handler) until the caller configures logging; the command line calls
:func:`configure`: INFO by default, ``--quiet`` WARNING only, ``-v`` DEBUG.

Example:
    >>> from diffana.log import Phases
    >>> phases = Phases()
    >>> with phases("hard_s", "hard-cut histograms"):
    ...     pass
    >>> sorted(phases.seconds)
    ['hard_s']
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

logger = logging.getLogger("diffana")


class _AboveProgressBars(logging.Handler):
    """Writes each record with ``tqdm.write``: above a progress bar that is running, not
    through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging's own contract: never raise from emit
            self.handleError(record)


def configure(verbosity: int = 0) -> None:
    """Show diffana's messages on stderr: ``verbosity`` -1 warnings only (``--quiet``), 0 also
    the phases (the default), 1 everything (``-v``). Idempotent."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logger.setLevel(level)
    if not any(isinstance(h, _AboveProgressBars) for h in logger.handlers):
        handler = _AboveProgressBars()
        handler.setFormatter(logging.Formatter("diffana: %(message)s"))
        logger.addHandler(handler)


class Phases:
    """Times the phases of a job (``seconds[key]``, summed over repeats) and logs each one's
    start and its elapsed time."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str, what: str | None = None):
        """Time the block as ``key``; with ``what``, log its start and its end."""
        if what:
            logger.info("%s ...", what)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[key] = self.seconds.get(key, 0.0) + elapsed
            if what:
                logger.info("%s: %.1f s", what, elapsed)
