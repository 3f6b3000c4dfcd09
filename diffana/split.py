"""Held-out events: each event in the training part or the test part, by its address.

``split: {test_fraction: f, seed: s}`` puts an event in the test part when a hash of
``(s, file name, entry number)`` falls below ``f``: the same event is in the same part
however the files are chunked, streamed or spread over Dask workers (the file's name, not
its directory: a copy of the file on a worker splits the same way).

The part of each event travels with the events as an event column (:data:`COLUMN`: 1 for a
test event, 0 for a training event), set when the events are read. The stages weigh the
events of a part (:func:`part_weight`): the optimiser sees the training events with their
weights × ``1/(1 − f)``, the hard evaluations the test events × ``1/f``, so that either
part estimates the yields of all the events. Without ``split:`` there is no column and the
weights are as read.

Example:
    >>> flags = is_test(0, 0.5, ["a.root"], np.zeros(10_000, int), np.arange(10_000))
    >>> bool(0.48 < flags.mean() < 0.52)
    True
    >>> is_test(0, 0.5, ["a.root"], [0], [7]) == is_test(0, 0.5, ["a.root"], [0], [7])
    array([ True])
"""

from __future__ import annotations

import hashlib

import numpy as np

#: the event column that holds each event's part (1: test, 0: training)
COLUMN = "__test__"
#: the parts an evaluation can weigh: the training events, the test events, or all events
PARTS = ("train", "test", "all")


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _name_key(seed: int, name: str) -> np.uint64:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def uniform(seed: int, file_names: list[str], file_index, entry) -> np.ndarray:
    """A number in [0, 1) per event, addressed by ``(seed, file name, entry)``.

    ``file_index`` indexes ``file_names`` (only the name of each path counts).
    """
    keys = np.array([_name_key(seed, str(n).replace("\\", "/").rsplit("/", 1)[-1])
                     for n in file_names], dtype=np.uint64)
    file_index = np.asarray(file_index, dtype=np.int64)
    with np.errstate(over="ignore"):
        h = _mix(keys[file_index] ^ _mix(np.asarray(entry, dtype=np.uint64)))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def is_test(seed: int, fraction: float, file_names: list[str], file_index,
            entry) -> np.ndarray:
    """1.0 for each event in the test part, 0.0 for each training event (float64)."""
    return (uniform(seed, file_names, file_index, entry) < fraction).astype(np.float64)


def part_factor(fraction: float, part: str, test):
    """The weight factor of each event in ``part`` (``test``: its :data:`COLUMN`).

    ``train``: ``(1 − test)/(1 − f)``; ``test``: ``test/f``; ``all``: 1 (None).
    """
    if part == "train":
        return (1.0 - test) / (1.0 - fraction)
    if part == "test":
        return test / fraction
    if part == "all":
        return None
    raise ValueError(f"part {part!r}: expected one of {', '.join(PARTS)}")


def part_weight(split, part: str, ops, weight):
    """The event weights of ``part`` (``split``: the configuration's ``split`` block or None).

    Without a split every part is all the events, and ``weight`` is returned as it is.
    """
    if split is None:
        return weight
    factor = part_factor(float(split.test_fraction), part, ops.event_branch(COLUMN))
    return weight if factor is None else weight * factor
