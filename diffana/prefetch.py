"""Bounded prefetch: the items of an iterator made ahead, in a thread, while the caller uses
the current one.

A streamed pass reads, decompresses and lowers chunk k+1 (and further, up to ``depth``
chunks) while chunk k is differentiated: uproot's decompression, most of Awkward and NumPy,
and XLA's computation release the GIL, so the two overlap. At most ``depth`` items wait in
the queue, plus one being made: memory grows by ``depth + 1`` chunks, not with the data.

An exception in the thread (a damaged file's one-line :class:`~diffana.exceptions.DataError`)
is raised again, the same object, in the caller when it reaches that item. When the caller
stops early (an exception of its own, ``KeyboardInterrupt``, or simply not reading to the
end) the thread is told to stop and is waited for: it finishes the item it is making and
makes no more, so nothing runs on after the caller has gone.

Example:
    >>> list(prefetched(iter(range(5)), depth=2))
    [0, 1, 2, 3, 4]
    >>> list(prefetched(iter(range(3)), depth=0))  # depth 0: made in the caller, no thread
    [0, 1, 2]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

POLL_S = 0.1  # how often a blocked side looks whether the other has stopped


class _Failed:
    """What the thread puts in the queue when making an item raised."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()  # the source is exhausted


def prefetched(source: Iterator, depth: int, name: str = "prefetch") -> Iterator:
    """The items of ``source`` in order, made up to ``depth`` items ahead in a thread.

    Args:
        source: an iterator; it is advanced only in the thread (``depth`` ≥ 1).
        depth: how many finished items may wait (0: no thread, ``source`` as it is).
        name: the thread's name (seen in a debugger and in ``threading.enumerate()``).
    """
    if depth <= 0:
        yield from source
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        """Put ``item`` unless the caller has stopped; whether it was put."""
        while not stop.is_set():
            try:
                items.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the caller, raised there
            put(_Failed(err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator's own clean-up runs here, not at exit
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = items.get(timeout=POLL_S)
            except queue.Empty:
                if not thread.is_alive() and items.empty():  # gone without a word: a bug
                    raise RuntimeError(f"{name}: the reading thread stopped early") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        _drain(items)
        thread.join()
        _drain(items)  # what the thread put while it was finishing: let the memory go


def _drain(items: queue.Queue) -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return
