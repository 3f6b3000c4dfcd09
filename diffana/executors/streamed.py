"""The compiled engine streaming: every evaluation takes the chunks again, one at a time.

Memory is bounded by a few chunks whatever the number of events (``streaming: true``, or
``auto`` when the events do not fit ``memory_limit``). A first pass over the files counts
the events of each set and finds the chunk shape. Each later pass reads, decompresses and
lowers the chunks ahead of the one being differentiated, in a thread
(:func:`diffana.prefetch.prefetched`, ``prefetch`` chunks deep); and the first pass that pads
them writes them into the lowered-chunk cache (:mod:`diffana.lowered_cache`), so that the
passes after it map flat arrays instead of reading the files.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from diffana import budget, ragged
from diffana.chunks import ChunkLayout, packed, packed_host_chunk, packed_layout
from diffana.executors.chunked import ChunkedExecutor, loss_of_sums, reverse_step, sum_over
from diffana.executors.setup import Setup
from diffana.exported import persistent
from diffana.generate import cache_dir
from diffana.lowered_cache import LoweredCache, cache_key
from diffana.prefetch import prefetched
from diffana.stages import chunk_yields_at, jit_cutflow, jit_events

log = logging.getLogger("diffana")

TOUCH_S = 10.0  # how often a pass over the cache marks its entry as in use
IN_FLIGHT = 4  # chunk computations dispatched and not finished (each holds its chunk)


def _last_chunk_step(kernel, objective, u, params_fixed: dict, before, chunk: dict):
    """``(loss, the last chunk's part of ∂loss/∂u, ∂loss/∂yields)`` (:func:`reverse_step`):
    the last chunk's yields added to the sum of those ``before`` it (None: it is the only
    chunk), the loss and its cotangent, and the chunk's VJP, in one function."""
    def loss_of(y):
        total = y if before is None else jax.tree_util.tree_map(jax.numpy.add, before, y)
        return loss_of_sums(kernel, objective, total)

    return reverse_step(lambda v: chunk_yields_at(kernel, v, params_fixed, chunk), loss_of, u)


jit_last_chunk_step = persistent(jax.jit(_last_chunk_step, static_argnums=(0, 1)),
                                 "last_chunk_step", (0, 1))


def _all_but_last(chunks, last: list):
    """The device chunks of ``chunks`` but the last, which is put in ``last``."""
    held = None
    for _, _, chunk in chunks:
        if held is not None:
            yield held
        held = chunk
    last.append(held)


def region_parts(kernel, chunks, params: dict, hard: bool):
    """``(set, {region: (x, W)})`` of each set in each ``(sets, events, device chunk)``;
    ``sets``: the chunk's one set (its events first), or its ``((set, first, stop), ...)``."""
    for sets, n, chunk in chunks:
        parts = jit_events(kernel, params, chunk, hard)
        for g, a, b in _segments(sets, n):
            yield g, {r: (x[a:b], w[:, a:b]) for r, (x, w) in parts.items()}


def _segments(sets, n: int) -> tuple:
    return ((sets, 0, n),) if isinstance(sets, (int, np.integer)) else sets


class StreamedExecutor(ChunkedExecutor):
    """Chunks read from the files (or the lowered-chunk cache) on every evaluation,
    ``prefetch_depth`` chunks ahead. As in memory, the event sets are laid end to end in the
    order they are read and cut into chunks of ``chunk_size`` events (:func:`packed`): a chunk
    may hold the end of one set and the start of the next, so many small sets (the AGC's
    samples and variations) cost no padding and no extra chunks.

    Attributes:
        prefetch_depth: chunks made ahead of the one computed (``prefetch``, fewer where
            ``memory_limit`` holds fewer).
        cache: the lowered-chunk cache's entry of this analysis (None: ``lowered_cache:
            false``).
        cached_first_pass: whether the first pass came from the cache (no file was read).
    """

    def __init__(self, setup: Setup):
        super().__init__(setup)
        cfg = self.kernel.cfg
        self.cache = (LoweredCache(cache_dir() / "lowered", cache_key(cfg, setup.readers))
                      if cfg.lowered_cache else None)
        # a complete entry holds what the first pass finds; with nonfinite: drop the first
        # pass also counts the values dropped, so it reads the files
        found = self.cache.first_pass if self.cache and cfg.nonfinite == "stop" else None
        self.cached_first_pass = found is not None
        if found is None:
            found = self._first_pass()
        for g, n in enumerate(found["n_events"]):
            setup.sets[g].n_events += n
        self.first_pass = found
        self.kernel = self.kernel.with_layout(_decode_layout(found["layout"]))
        limit, _ = budget.memory_limit(cfg.memory_limit)
        # the chunks computed, the one being made and those waiting must fit the budget
        # (and, in a reverse-mode step, the last chunk, held while the ones before are summed)
        fit = (cfg.prefetch if limit is None
               else max(0, limit // max(found["chunk_bytes"], 1) - 2 - IN_FLIGHT))
        self.prefetch_depth = min(cfg.prefetch, fit)
        self._writer_failed = False

    def _first_pass(self) -> dict:
        """Count the events of each set and find the chunk shape, reading every file."""
        cfg = self.kernel.cfg
        n_events = [0] * len(self.setup.sets)
        sizes, segments, chunk_bytes = [], [], 0
        total = sum(sum(r.entries) for r in self.setup.readers)
        with tqdm(total=total, desc="first pass", unit=" ev", unit_scale=True, delay=1.0,
                  disable=not self.setup.progress, leave=False) as bar:
            for sets, buffers in prefetched(self._lowered(progress=bar.update),
                                            cfg.prefetch, f"{cfg.name}: first pass"):
                for g, a, b in sets:
                    n_events[g] += b - a
                segments.append(sets)
                sizes.append(ragged.axis_sizes(buffers, self.kernel.plan))
                chunk_bytes = max(chunk_bytes,
                                  sum(a.nbytes for a in jax.tree_util.tree_leaves(buffers)))
        layout = packed_layout(sizes, segments, cfg.chunk_size, len(n_events), cfg.name)
        return {"n_events": n_events, "n_chunks": len(sizes), "chunk_bytes": chunk_bytes,
                "layout": _encode_layout(layout)}

    def _pieces(self, progress=None):
        """``(set, events, weight)`` of each set of each range of entries read."""
        index, size = self.setup.set_index, self.kernel.cfg.chunk_size
        for reader in self.setup.readers:
            reader.check_unchanged()  # read again every pass: the files must be the same
            for n_read, sets in reader.chunks(size):
                for key, (events, weight) in sets.items():
                    yield index[(reader.name, key)], events, weight
                if progress is not None:
                    progress(n_read)

    def _lowered(self, progress=None):
        """``(segments, lowered buffers)`` of each packed chunk read from the files."""
        plan = self.kernel.plan
        for sets, events, weight in packed(self._pieces(progress), self.kernel.cfg.chunk_size):
            yield sets, ragged.lower(events, plan, weight).buffers

    def _from_files(self, skip: int = 0):
        """``(segments, events, host chunk)`` of each chunk, read and lowered from the files
        (the first ``skip`` left out); written into the cache where it has no entry yet."""
        kernel, n_sets = self.kernel, len(self.kernel.groups)
        writer = self._cache_writer() if not skip else None
        try:
            for i, (sets, buffers) in enumerate(self._lowered()):
                if i < skip:
                    continue
                item = packed_host_chunk(kernel.layout, kernel.plan, sets, buffers, n_sets,
                                         kernel.cfg.name)
                if writer is not None:
                    writer = self._written(writer, writer.add, *item)
                yield item
            if writer is not None:
                self._written(writer, writer.finish)
                writer = None
        finally:
            if writer is not None:  # the pass stopped early: no partial entry
                writer.abandon()

    def _cache_writer(self):
        """A writer of the cache's entry, where it has none yet and one can be written."""
        if self.cache is None or self.cache.complete or self._writer_failed:
            return None
        try:
            writer = self.cache.writer(self.first_pass["n_chunks"],
                                       self.first_pass["chunk_bytes"] * 2, self.first_pass)
        except OSError as err:
            writer = None
            log.warning("%s: the lowered-chunk cache cannot be written (%s); every step reads "
                        "the files", self.kernel.cfg.name, err)
        self._writer_failed = writer is None  # no room: do not ask on every pass
        return writer

    def _written(self, writer, write, *args):
        """``write(*args)``; the writer, or None where the disk refused (then no entry)."""
        try:
            write(*args)
            return writer
        except OSError as err:
            writer.abandon()
            self._writer_failed = True
            log.warning("%s: the lowered-chunk cache cannot be written (%s); every step reads "
                        "the files", self.kernel.cfg.name, err)
            return None

    def _from_cache(self):
        """``(segments, events, host chunk)`` of each chunk, mapped from the cache; the files
        take over where the entry went away (another run evicted it)."""
        done, touched = 0, time.monotonic()
        try:
            for item in self.cache.chunks():
                yield item
                done += 1
                if time.monotonic() - touched > TOUCH_S:
                    self.cache.touch()
                    touched = time.monotonic()
        except OSError:
            self.cache.manifest = None
            yield from self._from_files(skip=done)

    def _host_chunks(self):
        for reader in self.setup.readers:
            reader.check_unchanged()  # the cache's key holds the files as they were
        if self.cache is not None and self.cache.complete:
            return self._from_cache()
        return self._from_files()

    def _chunks(self):
        """``(segments, events, device chunk)`` of each chunk, made ``prefetch_depth`` ahead in a
        thread (uproot, Awkward, NumPy and XLA release the GIL), with a progress bar."""
        device = self.setup.device

        def on_device():
            for sets, n, host in self._host_chunks():
                yield sets, n, ragged.to_device(host, device)

        total = sum(self.first_pass["n_events"])
        with tqdm(total=total, desc="streamed pass", unit=" ev", unit_scale=True, delay=1.0,
                  disable=not self.setup.progress, leave=False) as bar:
            for item in prefetched(on_device(), self.prefetch_depth,
                                   f"{self.kernel.cfg.name}: prefetch"):
                yield item
                bar.update(item[1])

    def map_reduce(self, name: str, args: tuple):
        return sum_over(name, self.kernel, args, (chunk for _, _, chunk in self._chunks()),
                        in_flight=IN_FLIGHT)

    def loss_and_grad(self, u, params_fixed: dict):
        """In reverse mode, two passes, and the last chunk of the first differentiated where
        it stands: its yields, the loss, the cotangent and its VJP in one function
        (:func:`_last_chunk_step`), so the second pass reads and differentiates the chunks
        before it only. With one chunk (events that fit one, as the AGC's after preselection)
        a step is one pass, as the in-memory fused step is; with ``k`` chunks a step reads
        ``2k - 1`` of them instead of ``2k``. The sums run in the same order as
        :meth:`ChunkedExecutor.loss_and_grad`'s."""
        if self.gradient_mode != "reverse":
            return super().loss_and_grad(u, params_fixed)
        kernel = self.kernel
        last: list = []
        before = sum_over("yields", kernel, (kernel.space.from_unit(u, params_fixed),),
                          _all_but_last(self._chunks(), last), in_flight=IN_FLIGHT)
        loss, grad_last, cotangent = jit_last_chunk_step(kernel, self.objective_spec, u,
                                                         params_fixed, before, last[0])
        if before is None:
            return loss, grad_last
        with contextlib.closing(self._chunks()) as chunks:  # stops the read-ahead early
            grad = sum_over("vjp", kernel, (u, params_fixed, cotangent),
                            (c for _, _, c in itertools.islice(chunks, self.n_chunks - 1)),
                            in_flight=IN_FLIGHT)
        return loss, grad + grad_last

    @property
    def n_chunks(self) -> int:
        return self.first_pass["n_chunks"]

    def event_parts(self, params: dict, hard: bool, part: str | None = None):
        yield from region_parts(self.part_kernel(part), self._chunks(), params, hard)

    def cutflow_parts(self, params: dict):
        for sets, _, chunk in self._chunks():
            flow = jit_cutflow(self.kernel, params, chunk)
            for g, a, b in sets:
                yield g, flow[..., a:b]


def _encode_key(key):
    return [_encode_key(k) for k in key] if isinstance(key, tuple) else key


def _decode_key(key):
    return tuple(_decode_key(k) for k in key) if isinstance(key, list) else key


def _encode_layout(layout: ChunkLayout) -> dict:
    """A layout as JSON (its axes are tuples)."""
    return {"capacity": [[_encode_key(k), v] for k, v in layout.capacity.items()],
            "runs": [[_encode_key(k), v] for k, v in layout.runs.items()],
            "slots": layout.slots}


def _decode_layout(data: dict) -> ChunkLayout:
    return ChunkLayout({_decode_key(k): v for k, v in data["capacity"]},
                       {_decode_key(k): v for k, v in data["runs"]}, data["slots"])
