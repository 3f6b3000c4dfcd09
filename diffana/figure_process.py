"""Figures drawn in a process of their own, so that drawing does not hold the run's GIL.

Matplotlib draws in Python. In a thread of the run's process it holds the interpreter lock
for seconds at a time, and the work beside it (the sensitivity, the inference's fits: JAX
calls with Python between them) waited for it: on the AGC the sensitivity took 1.0-1.3 s
alone and 4.4-5.5 s beside the figures, the inference 1.6-1.9 s and 4.6-5.6 s. A child
interpreter draws them instead. It starts with the run, so that its imports (JAX and
matplotlib, ~2 s) overlap the optimisation, and takes one call at a time: a function of a
diffana module, named, with its arguments, pickled through its standard input; each answer
(the result, or the exception) comes back through its standard output.

Hand-written rather than :class:`concurrent.futures.ProcessPoolExecutor`: once JAX's
threads run, a child must not be forked, and multiprocessing's other start methods (spawn,
forkserver) import the parent's ``__main__`` script again in the child, which would run a
user's script that calls diffana without an ``if __name__ == "__main__"`` guard a second
time.

``DIFFANA_FIGURES=thread`` draws in a thread of the run's process instead (as where no
child can be started).
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from diffana.exceptions import DiffanaError

#: The environment variable that chooses where figures are drawn: ``process`` (default) or
#: ``thread``.
MODE = "DIFFANA_FIGURES"
#: Figure processes a run starts; each figure is drawn by the next one free (on the AGC the
#: seven figures take ~5 s of drawing, the sensitivity and the inference beside them ~2 s).
PROCESSES = 2
#: Seconds :meth:`FigureProcess.close` gives the child to finish its figure and exit.
CLOSE_TIMEOUT = 60.0
_LENGTH = 8  # bytes of an answer's length


class ProcessGone(DiffanaError):
    """The figure process is gone (killed, out of memory, could not start) or its answer
    cannot be read."""


class FigureProcess:
    """A child interpreter that calls functions of diffana's modules, one at a time.

    Not for several threads at once: one thread calls it (the run's figure thread).
    """

    def __init__(self) -> None:
        # the child imports the diffana this process runs, wherever it was found
        path = os.pathsep.join(p for p in sys.path if p)
        self._child = subprocess.Popen([sys.executable, "-m", __name__],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       env={**os.environ, "PYTHONPATH": path})

    @classmethod
    def start(cls) -> FigureProcess | None:
        """A started figure process; ``None`` where figures are to be drawn in a thread
        (``DIFFANA_FIGURES=thread``) or no process can be started."""
        mode = os.environ.get(MODE, "process")
        if mode not in ("process", "thread"):
            raise DiffanaError(f"{MODE}={mode!r}: expected 'process' or 'thread'")
        if mode == "thread":
            return None
        try:
            return cls()
        except OSError:
            return None

    @classmethod
    @contextmanager
    def started(cls) -> Iterator[list[FigureProcess]]:
        """The figure processes of a run, closed at the block's end however it ends:
        :data:`PROCESSES` of them, or none where figures are drawn in a thread
        (:meth:`start`)."""
        started = [p for p in (cls.start() for _ in range(PROCESSES)) if p is not None]
        try:
            yield started
        finally:
            for process in started:
                process.close()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._child.pid

    @staticmethod
    def takes(draw: Any) -> bool:
        """Whether the child can call ``draw``: a function of a diffana module, found there
        under its name (not a stand-in a test put in its place)."""
        name = getattr(draw, "__module__", None) or ""
        module = sys.modules.get(name)
        return (name.startswith("diffana.") and module is not None
                and getattr(module, getattr(draw, "__qualname__", ""), None) is draw)

    def call(self, draw, *args) -> Any:
        """``draw(*args)`` in the child: its result, or what it raised, raised here.

        Raises:
            ProcessGone: the child is gone or its answer cannot be read.
        """
        request = pickle.dumps((draw.__module__, draw.__qualname__, args),
                               protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._child.stdin.write(request)
            self._child.stdin.flush()
            size = int.from_bytes(_read(self._child.stdout, _LENGTH), "little")
            ok, value = pickle.loads(_read(self._child.stdout, size))
        except (OSError, EOFError, pickle.UnpicklingError) as err:
            raise ProcessGone(f"the figure process stopped while drawing {draw.__qualname__} "
                              f"(exit code {self._child.poll()}): {err}") from None
        if not ok:
            raise value
        return value

    def close(self) -> int:
        """Let the child finish what it draws and exit (killed after
        :data:`CLOSE_TIMEOUT` seconds); its exit code."""
        try:
            self._child.stdin.close()
        except OSError:  # gone already
            pass
        try:
            self._child.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._child.stdout.close()
        return self._child.returncode


def _read(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("no answer")
    return data


def _answer(module: str, name: str, args: tuple) -> bytes:
    try:
        answer = (True, getattr(importlib.import_module(module), name)(*args))
    except Exception as err:  # raised again in the run's process
        answer = (False, err)
    try:
        return pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle: its type and message
        err = answer[1]
        return pickle.dumps((False, DiffanaError(f"{type(err).__name__}: {err}")))


def _serve(requests, answers) -> None:
    """Answer every request until the run closes the child's input."""
    while True:
        try:
            module, name, args = pickle.load(requests)
        except EOFError:
            return
        answer = _answer(module, name, args)
        answers.write(len(answer).to_bytes(_LENGTH, "little") + answer)
        answers.flush()


if __name__ == "__main__":
    # The run decides when to stop (Ctrl-C reaches the whole process group): it closes our
    # input once the figure being drawn is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what a library prints goes to the run's standard error, not the answers
    importlib.import_module("diffana.plot_inference")  # while the run optimises
    importlib.import_module("diffana.plot").warm_up()
    # what is loaded now lives as long as this process: out of the garbage collector's sight,
    # its full collections (which a figure's many short-lived objects set off) walk only
    # what the figures made (the seven AGC figures ~5 % faster)
    gc.freeze()
    _serve(sys.stdin.buffer, answers)
