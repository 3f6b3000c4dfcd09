"""Chunks: the compiled engine's unit of work, padded to one shape.

Events are lowered chunk by chunk; each chunk's buffers are padded to the capacities of a
:class:`ChunkLayout` so that one compiled function serves every chunk. In memory the
chunks are held once, stacked (:class:`HeldChunks`); streamed or on Dask workers each chunk
is read from a :class:`WorkItem` (a range of entries of one file of one sample).

A chunk may hold events of several event sets (in memory and streamed, the sets are laid end to
end: :func:`packed`): each event has a *slot* among the sets of its histogram block
(``__slot__``), and ``slots`` maps a block's slots to the sets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np

from diffana import ragged
from diffana.exceptions import ConfigError, DataError
from diffana.plan import Plan

KDE_BLOCK = 256  # events per histogram block of a chunk (see block_size)
ROUND = 512  # axis capacities are rounded up to a multiple of this


@dataclass(frozen=True)
class ChunkLayout:
    """The padded shape of every chunk.

    ``capacity``: each axis's length (``"event"``, ``("objects", root)``,
    ``("prepared", name)``); ``runs``: the most objects of one event on each scanned axis
    (``("run", axis)``); ``slots``: the most event sets one histogram block holds.
    """

    capacity: dict
    runs: dict
    slots: int

    @property
    def events(self) -> int:
        """Events per chunk."""
        return self.capacity["event"]

    @property
    def block(self) -> int:
        """Events per histogram block."""
        return block_size(self.events)


@dataclass(frozen=True)
class WorkItem:
    """Entries ``[start, stop)`` of file ``file`` of the ``reader``-th sample (coffea's
    ``WorkItem``): what a streamed pass or a Dask task reads and lowers."""

    reader: int
    file: int
    start: int
    stop: int


def work_items(entries: list[list[int]], chunk_size: int) -> list[WorkItem]:
    """The work items of samples whose files have ``entries[reader][file]`` entries."""
    return [WorkItem(i, f, a, min(a + chunk_size, n)) for i, per_file in enumerate(entries)
            for f, n in enumerate(per_file) for a in range(0, n, chunk_size)]


def capacity_of(sizes: list[dict], size: int) -> tuple[dict, dict]:
    """Each axis's largest size over the chunks, rounded up (``capacity``), and the most
    objects of one event on each scanned axis (``runs``)."""
    capacity: dict = {}
    for chunk in sizes:
        for axis, n in chunk.items():
            capacity[axis] = max(capacity.get(axis, 1), n)
    runs = {axis: n for axis, n in capacity.items() if axis[0] == "run"}
    # round up so that similar inputs share shapes (and compiled code) across runs
    capacity = {axis: -(-n // ROUND) * ROUND for axis, n in capacity.items() if axis[0] != "run"}
    capacity["event"] = min(capacity["event"], size)
    return capacity, runs


def single_set_layout(sizes: list[dict], chunk_size: int, name: str) -> ChunkLayout:
    """The layout of chunks of one event set each (streamed or on Dask workers) from their
    axis sizes: each axis's largest size, rounded up."""
    if not sizes:
        raise DataError(f"{name}: no events left to analyse (after preselection)")
    # a block holds events of its chunk's one set, and padding: two slots
    return ChunkLayout(*capacity_of(sizes, -(-chunk_size // ROUND) * ROUND), slots=2)


def packed_layout(sizes: list[dict], segments: list, chunk_size: int, n_sets: int,
                  name: str) -> ChunkLayout:
    """The layout of packed chunks (streamed: :func:`packed`) from their axis sizes and
    their sets' ``segments``: each axis's largest size, rounded up, and the most sets (padding
    included) that one histogram block holds."""
    if not sizes:
        raise DataError(f"{name}: no events left to analyse (after preselection)")
    capacity, runs = capacity_of(sizes, -(-chunk_size // ROUND) * ROUND)
    n_chunk = capacity["event"]
    slots = max(_most_sets(padded_groups(set_groups(s), n_chunk, n_sets), block_size(n_chunk))
                for s in segments)
    return ChunkLayout(capacity, runs, slots)


def _most_sets(groups: np.ndarray, block: int) -> int:
    """The most distinct sets in one block of ``block`` events of a chunk's ``groups``."""
    blocks = np.sort(groups.reshape(-1, block), axis=1)
    return int(1 + (np.diff(blocks, axis=1) != 0).sum(axis=1).max())


def set_groups(segments) -> np.ndarray:
    """Each event's set in a packed chunk of ``segments`` ``[(set, first, stop)]``."""
    return np.repeat(np.array([g for g, _, _ in segments], np.int32),
                     [b - a for _, a, b in segments])


def packed(pieces, size: int):
    """Consecutive pieces of event sets laid end to end and cut into chunks of ``size``
    events (the last may hold fewer), as the in-memory executor lays its sets: a chunk may
    hold the end of one set and the start of the next, so small sets cost no padding.

    Args:
        pieces: ``(set, events, weight)`` in order (Awkward events, NumPy weights).
        size: events per chunk.

    Yields:
        ``(segments, events, weight)`` of each chunk, ``segments`` ``((set, first, stop),
        ...)`` where its events of each set lie. No more than one chunk's events wait.

    Example:
        >>> import awkward as ak, numpy as np
        >>> parts = [(g, ak.Array({"x": np.arange(n)}), np.ones(n)) for g, n in ((0, 3), (1, 4))]
        >>> [s for s, _, _ in packed(parts, 5)]
        [((0, 0, 3), (1, 3, 5)), ((1, 0, 2),)]
    """
    waiting, n_waiting = [], 0
    for g, events, weight in pieces:
        if not len(weight):
            continue
        waiting.append((g, events, weight))
        n_waiting += len(weight)
        while n_waiting >= size:
            chunk, waiting = _take(waiting, size)
            n_waiting -= size
            yield chunk
    if n_waiting:
        yield _take(waiting, n_waiting)[0]


def _take(waiting: list, size: int) -> tuple[tuple, list]:
    """The first ``size`` events of the waiting pieces as one chunk, and what is left."""
    taken, segments, n = [], [], 0
    while n < size:
        g, events, weight = waiting.pop(0)
        k = min(size - n, len(weight))
        if k < len(weight):  # the rest of this piece starts the next chunk
            waiting.insert(0, (g, events[k:], weight[k:]))
            events, weight = events[:k], weight[:k]
        if segments and segments[-1][0] == g:  # a set read in several pieces
            segments[-1] = (g, segments[-1][1], n + k)
        else:
            segments.append((g, n, n + k))
        taken.append((events, weight))
        n += k
    events = taken[0][0] if len(taken) == 1 else ak.concatenate([e for e, _ in taken])
    weight = taken[0][1] if len(taken) == 1 else np.concatenate([w for _, w in taken])
    return (tuple(segments), events, weight), waiting


def packed_host_chunk(layout: ChunkLayout, plan: Plan, segments, buffers: dict, n_sets: int,
                      name: str) -> tuple[tuple, int, dict]:
    """``(segments, events, padded host chunk)`` of a lowered packed chunk."""
    groups = padded_groups(set_groups(segments), layout.events, n_sets)
    return segments, segments[-1][2], host_chunk(layout, plan, buffers, groups, n_sets, name)


def lower_sets(plan: Plan, set_index: dict, reader: str, sets: dict) -> list:
    """``[(set, lowered buffers)]`` of a reader's ``{set key: (events, weight)}``;
    ``set_index[(reader, key)]`` numbers the sets."""
    return [(set_index[(reader, key)], ragged.lower(events, plan, weight).buffers)
            for key, (events, weight) in sets.items() if len(weight)]


def device_chunk(layout: ChunkLayout, plan: Plan, buffers: dict, groups: np.ndarray,
                 n_sets: int, device, name: str) -> dict:
    """A lowered chunk padded to the layout, with its events' slots, on the device.

    ``groups``: each event's set (padding events: ``n_sets``); ``name`` is for messages.
    """
    return ragged.to_device(host_chunk(layout, plan, buffers, groups, n_sets, name), device)


def host_chunk(layout: ChunkLayout, plan: Plan, buffers: dict, groups: np.ndarray,
               n_sets: int, name: str) -> dict:
    """A lowered chunk padded to the layout, with its events' slots, as NumPy arrays (what
    :func:`device_chunk` puts on the device)."""
    for axis, n in ragged.axis_sizes(buffers, plan).items():
        limit = layout.runs if axis[0] == "run" else layout.capacity
        if n > limit[axis]:
            raise DataError(f"{name}: a chunk has {n} entries on {axis}, more than "
                            f"the {limit[axis]} of the first pass (did the files change?)")
    padded = ragged.pad(buffers, plan, layout.capacity)
    blocks = [np.unique(b, return_inverse=True) for b in groups.reshape(-1, layout.block)]
    padded["events"]["__slot__"] = np.concatenate([slot for _, slot in blocks]).astype(np.int32)
    # unused slots (and the padding events' set) are dropped
    padded["slots"] = np.array([np.concatenate([present, np.full(
        layout.slots - len(present), n_sets)]) for present, _ in blocks], np.int32)
    return padded


def one_set_chunk(layout: ChunkLayout, plan: Plan, g: int, buffers: dict, n_sets: int, device,
                  name: str) -> tuple[int, int, dict]:
    """``(set, events, padded device chunk)`` of a lowered chunk of one set."""
    g, n, host = one_set_host_chunk(layout, plan, g, buffers, n_sets, name)
    return g, n, ragged.to_device(host, device)


def one_set_host_chunk(layout: ChunkLayout, plan: Plan, g: int, buffers: dict, n_sets: int,
                       name: str) -> tuple[int, int, dict]:
    """``(set, events, padded host chunk)`` of a lowered chunk of one set."""
    n = len(buffers["weight"])
    groups = padded_groups(np.full(n, g, np.int32), layout.events, n_sets)
    return g, n, host_chunk(layout, plan, buffers, groups, n_sets, name)


def block_size(n_chunk: int) -> int:
    """Events per histogram block of a chunk: each block holds events of one or a few event
    sets, each event a slot among them (see :func:`diffana.executors.held.HeldExecutor`)."""
    return KDE_BLOCK if n_chunk % KDE_BLOCK == 0 else n_chunk


def padded_groups(groups: np.ndarray, n_chunk: int, n_sets: int) -> np.ndarray:
    """Each event's set in a chunk of ``n_chunk`` events; padding events are in the set
    ``n_sets``, which the chunk function drops."""
    return np.concatenate([groups, np.full(n_chunk - len(groups), n_sets, np.int32)])


class HeldChunks:
    """The compiled engine's in-memory chunks, held once: one array per buffer with a
    leading chunk axis (``stacked``, what the fused mode's ``lax.scan`` runs over).

    ``chunks[i]`` is chunk ``i`` (a copy, made when asked: the per-chunk gradient modes and
    the hard fills take one at a time). The chunks are written into the stacked arrays as
    they come, in place (the arrays are donated), so they never exist twice.
    """

    def __init__(self, chunks, n_chunks: int):
        chunks = iter(chunks)
        self.stacked = _first_of_stack(next(chunks), n_chunks)
        for i, chunk in enumerate(chunks, start=1):
            self.stacked = _put_in_stack(self.stacked, chunk, i)
        self._n = n_chunks

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self._n:
            raise IndexError(f"chunk {i} of {self._n}")
        return _take_from_stack(self.stacked, i)

    def __iter__(self):
        return (self[i] for i in range(self._n))


@functools.partial(jax.jit, static_argnums=1)
def _first_of_stack(chunk: dict, n_chunks: int) -> dict:
    return jax.tree_util.tree_map(
        lambda a: jnp.zeros((n_chunks, *a.shape), a.dtype).at[0].set(a), chunk)


@functools.partial(jax.jit, donate_argnums=0)
def _put_in_stack(stacked: dict, chunk: dict, i) -> dict:
    return jax.tree_util.tree_map(
        lambda s, a: jax.lax.dynamic_update_index_in_dim(s, a, i, 0), stacked, chunk)


@jax.jit
def _take_from_stack(stacked: dict, i) -> dict:
    return jax.tree_util.tree_map(lambda s: jax.lax.dynamic_index_in_dim(s, i, 0, False),
                                  stacked)


def compute_device(kind: str):
    """The JAX device of ``device: auto|cpu|gpu`` (``None``: JAX's default device)."""
    if kind == "auto":
        return None
    try:
        return jax.devices(kind)[0]
    except RuntimeError:
        have = sorted({d.platform for d in jax.devices()})
        raise ConfigError(f"device: {kind!r}: JAX finds no such device here (it has {have}); "
                          "use device: auto, or install JAX with CUDA") from None
