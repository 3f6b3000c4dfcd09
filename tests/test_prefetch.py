"""The bounded prefetch: order, a bounded queue, errors raised where the item is used, and a
thread that stops when its caller does (an exception, Ctrl-C, an early stop)."""

from __future__ import annotations

import threading
import time

import pytest

from diffana.exceptions import DataError
from diffana.prefetch import prefetched


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_items_in_order(depth):
    assert list(prefetched(iter(range(20)), depth)) == list(range(20))


def test_at_most_depth_ahead():
    made = []

    def source():
        for i in range(10):
            made.append(i)
            yield i

    it = prefetched(source(), 2, name="bounded")
    assert next(it) == 0
    time.sleep(0.3)
    # item 0 taken; two wait in the queue; one more made, waiting to be put
    assert len(made) <= 4
    assert list(it) == list(range(1, 10))
    assert not _threads("bounded")


def test_an_error_in_the_thread_is_raised_where_its_item_is_used():
    error = DataError("f.root: branch 'Jet_pt' of 'Events' cannot be read at entries 0-10")

    def source():
        yield 1
        yield 2
        raise error

    got = []
    with pytest.raises(DataError) as info:
        for item in prefetched(source(), 2, name="failing"):
            got.append(item)
    assert info.value is error and got == [1, 2]  # the same one-line error, after the good items
    assert not _threads("failing")


@pytest.mark.parametrize("stop", [KeyboardInterrupt, ValueError])
def test_the_thread_stops_with_its_caller(stop):
    """The caller stops (Ctrl-C: KeyboardInterrupt in the main thread, or an error of its
    own) while the thread is blocked on a full queue: it ends, and the source is closed."""
    closed = threading.Event()

    def source():
        try:
            yield from range(1000)
        finally:
            closed.set()

    with pytest.raises(stop):
        for i in prefetched(source(), 1, name="stopped"):
            if i == 3:
                raise stop()
    assert closed.wait(5) and not _threads("stopped")


def test_leaving_early_stops_the_thread():
    it = prefetched(iter(range(1000)), 3, name="left")
    assert next(it) == 0
    it.close()
    assert not _threads("left")


def test_a_slow_reader_overlaps_with_the_caller():
    """Making an item and using one take 0.1 s each: in a thread they overlap."""
    def source():
        for i in range(5):
            time.sleep(0.1)
            yield i

    t0 = time.perf_counter()
    for _ in prefetched(source(), 2):
        time.sleep(0.1)
    assert time.perf_counter() - t0 < 0.9  # 1.0 s one after the other
