"""SIGINT and SIGTERM during a run: raised where stopping is safe, kept where it is not.

Example:
    >>> signals = Signals()
    >>> with signals.installed(), signals.deferred():
    ...     pass  # a signal here is pending until signals.check()
    >>> signals.check()
"""

from __future__ import annotations

import signal
import sys
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

    Every signal is also kept as ``pending`` when it is raised: one that arrives in a callback
    whose exceptions Python ignores (a weak reference's, the garbage collector's) is swallowed
    there, and ``check()`` raises it at the next safe point instead; while installed, such an
    :class:`Interrupted` is not printed (``sys.unraisablehook``).
    """

    def __init__(self):
        self.hold = False
        self.pending: int | None = None
        self._deferred = False
        self._unraisable_before = sys.unraisablehook

    def _handler(self, signum, frame):
        if self.hold:
            return
        self.pending = self.pending or signum  # for check(), where the raise is swallowed
        if self._deferred or (frame is not None and frame.f_code.co_name == "__del__"):
            return
        raise Interrupted(signum=signum)

    def _unraisable(self, unraisable) -> None:
        """An :class:`Interrupted` that Python could not raise is pending, not printed."""
        if not isinstance(unraisable.exc_value, Interrupted):
            self._unraisable_before(unraisable)

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
        self._unraisable_before, sys.unraisablehook = sys.unraisablehook, self._unraisable
        try:
            yield
        finally:
            sys.unraisablehook = self._unraisable_before
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
