"""SIGINT and SIGTERM during a run: raised where stopping is safe, kept where it is not.

Example:
    >>> signals = Signals()
    >>> with signals.installed(), signals.deferred():
    ...     pass  # a signal here is pending until signals.check()
    >>> signals.check()
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from diffana.optimise import Interrupted


class Signals:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (not while ``hold``).

    While ``deferred`` (the hard-cut evaluation, the plots and the files after the last step),
    and inside a finaliser (``__del__``, where Python ignores the exception), a signal is kept
    as ``pending`` and raised by ``check()`` at the next point where stopping is safe: an
    exception raised in the middle of a JAX compilation leaves XLA in a state that crashes the
    interpreter as it exits (a segmentation fault instead of exit 130).
    """

    def __init__(self):
        self.hold = False
        self.pending: int | None = None
        self._deferred = False

    def _handler(self, signum, frame):
        if self.hold:
            return
        if self._deferred or (frame is not None and frame.f_code.co_name == "__del__"):
            self.pending = self.pending or signum
            return
        raise Interrupted(signum=signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` for a signal that arrived while it could not be raised."""
        if self.pending is not None and not self.hold:
            raise Interrupted(signum=self.pending)

    @contextmanager
    def deferred(self):
        """Signals within are ``pending`` until ``check()``."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        # a signal the process was told to ignore (SIGINT under nohup or `cmd &`) stays ignored
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
