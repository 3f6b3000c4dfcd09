"""Gradient steps on Dask, streamed (``executor: {kind: dask}`` with ``streaming: true``, or
``auto`` when the events do not fit ``memory_limit``): each worker streams its own files.

::

    client (the analysis, optax)                   workers (one part of the work items each)
      parts: the work items cut into one run   ──▶  first pass over its part: the events of
      of consecutive items per worker               each set, its chunk shape
      u, θ (each step)                          ──▶  the streamed executor over its part:
                                                    chunks read ahead in a thread, or mapped
                                                    from the worker's lowered-chunk cache
      Σ (tree reduction of small results)       ◀──

A part is what :class:`~diffana.executors.streamed.StreamedExecutor` streams on one machine,
restricted to some work items (:class:`PartReader`): the same read-ahead
(:func:`~diffana.prefetch.prefetched`, ``prefetch`` chunks deep, fewer where the worker's
``memory_limit`` holds fewer) and the same lowered-chunk cache, in the worker's own
``$DIFFANA_CACHE/lowered`` (an entry per part: its key holds the part's files and ranges of
entries). The first step reads the files and writes the entry; the steps after it, and a later
run on the same files, map it. A worker holds the chunks read ahead and the few being
computed, never its part's all; nothing stays in its memory between steps but the part's
first-pass record.

One task per part per step, on the worker that holds the part's first-pass result (each
step's task takes it as an argument, so Dask runs it where that result is: the worker whose
cache is warm). A part whose worker left has its first pass computed again from its lineage
on another worker (or a restarted one), and its steps follow it there (from its files, or
from a cache on a shared disk); no task is tied to a worker by name, which would leave it
waiting for a worker that is gone. One task per work item instead would lose the
read-ahead (a task reads its one item, then computes it) and pay Dask's per-task cost on every
item. Errors raised on a worker (a file it cannot read) reach the client as the same
:class:`~diffana.exceptions.DataError` as in memory.
"""

from __future__ import annotations

import pickle
import uuid

import jax
from tqdm.auto import tqdm

from diffana.chunks import WorkItem, work_items
from diffana.events import StreamedSet
from diffana.exceptions import DataError
from diffana.executors.dask import AnalysisPlugin, DaskExecutor, worker_context
from diffana.executors.setup import Setup
from diffana.executors.streamed import StreamedExecutor

# per worker process: {(analysis key, run, part): (its work items, its streamed executor)}
_PARTS: dict[tuple[str, str, int], tuple[tuple, StreamedExecutor | None]] = {}


class PartReader:
    """A sample's reader seen through some of its work items: what one part reads.

    It reads as :class:`~diffana.events.SampleReader` does (``chunks``, ``check_unchanged``),
    one work item at a time, and names its inputs by file and range of entries (so the part's
    entry in the lowered-chunk cache is its own).

    Attributes:
        items_read: work items read from the files so far (not from the cache).
        events_kept: events of every set read so far (after preselection).
    """

    def __init__(self, reader, items: list[WorkItem]):
        self.reader, self.items = reader, items
        self.name, self.branches, self.norm = reader.name, reader.branches, reader.norm
        self.inputs = [{**reader.inputs[i.file], "start": i.start, "stop": i.stop}
                       for i in items]
        self.entries = [i.stop - i.start for i in items]
        self.items_read = self.events_kept = 0

    def check_unchanged(self) -> None:
        self.reader.check_unchanged()

    def chunks(self, chunk_size: int):
        """``(events read, {set: (events, weight)})`` of each work item (``chunk_size``
        entries or fewer each already)."""
        for item in self.items:
            sets = self.reader.read_range(item.file, item.start, item.stop)
            self.items_read += 1
            self.events_kept += sum(len(w) for _, w in sets.values())
            yield item.stop - item.start, sets


def part_executor(key: str, part: tuple[str, int], items: tuple) -> StreamedExecutor | None:
    """The streamed executor of ``part`` (the client's run, the part's number) on this worker;
    made on first use, which runs its first pass (or takes it from the worker's lowered-chunk
    cache). None: the preselection kept no event of the part. The worker's context (plan,
    readers, compiled kernel) is shared by the runs."""
    found = _PARTS.get((key, *part))
    if found is not None and found[0] == items:
        return found[1]
    ctx = worker_context(key)
    readers = [PartReader(r, [i for i in items if i.reader == n])
               for n, r in enumerate(ctx.readers)]
    readers = [r for r in readers if r.items]
    by_name = {r.name: r for r in ctx.readers}
    sets = [None] * len(ctx.set_index)
    for (name, set_key), g in ctx.set_index.items():
        sets[g] = StreamedSet(by_name[name], set_key)
    try:
        executor = StreamedExecutor(Setup(ctx.kernel, None, readers, sets, ctx.set_index,
                                          ctx.device, ctx.base, progress=False))
    except DataError:  # every item read and no event kept: the part adds nothing
        if any(r.events_kept or r.items_read < len(r.items) for r in readers):
            raise  # a file that cannot be read, or another data error
        executor = None
    _PARTS[(key, *part)] = (items, executor)
    return executor


def _first_pass(key: str, part: tuple, items: tuple) -> list[int]:
    """The events of each set in the part."""
    ex = part_executor(key, part, items)
    return [0] * len(worker_context(key).set_index) if ex is None else ex.first_pass["n_events"]


def _run(key: str, part: tuple, items: tuple, placed, name: str, args: tuple):
    """``Σ CHUNK_FUNCTIONS[name](kernel, *args, chunk)`` over the part's chunks, as NumPy
    (``placed``: the part's first-pass result, which puts the task on the part's worker; None
    for a part without events)."""
    ex = part_executor(key, part, items)
    return None if ex is None else jax.device_get(ex.map_reduce(name, args))


def _hard(key: str, part: tuple, items: tuple, placed, params: dict, samples: list[str],
          events: str):
    ex = part_executor(key, part, items)
    return None if ex is None else ex.hard_histograms(params, samples, events)


def _part_records(key: str, run: str, dask_worker=None) -> dict:
    """What each part of a run streamed on this worker did (see
    :meth:`DaskStreamedExecutor.parts_read`)."""
    out = {}
    for (k, r, index), (_, ex) in _PARTS.items():
        if (k, r) == (key, run) and ex is not None:
            out[index] = {"worker": getattr(dask_worker, "address", None),
                          "chunks": ex.first_pass["n_chunks"],
                          "prefetch_depth": ex.prefetch_depth,
                          "items_read": sum(r.items_read for r in ex.setup.readers),
                          "cached_first_pass": ex.cached_first_pass,
                          "cache": None if ex.cache is None else str(ex.cache.path),
                          "cache_complete": ex.cache is not None and ex.cache.complete}
    return out


def _forget(key: str, run: str) -> None:
    """Let go of a run's parts on this worker (the run closed)."""
    for part in [p for p in _PARTS if p[:2] == (key, run)]:
        del _PARTS[part]


def parts_of(items: list[WorkItem], n: int) -> list[tuple]:
    """``items`` cut into ``n`` runs of consecutive items with about as many entries each
    (an item each where there are no more items than runs).

    Example:
        >>> [len(p) for p in parts_of([WorkItem(0, 0, a, a + 10) for a in range(0, 50, 10)], 2)]
        [3, 2]
    """
    if n >= len(items):
        return [(item,) for item in items]
    total = sum(i.stop - i.start for i in items)
    parts: list[list] = [[] for _ in range(max(min(n, len(items)), 1))]
    before = 0
    for item in items:
        parts[min(before * len(parts) // max(total, 1), len(parts) - 1)].append(item)
        before += item.stop - item.start
    return [tuple(p) for p in parts if p]


class DaskStreamedExecutor(DaskExecutor):
    """Each Dask worker streams its own part of the work items on every step.

    Attributes:
        parts: each part's work items (consecutive ranges of the files).
        tasks: Dask tasks per step (one per part).
    """

    #: parts per worker (more balance uneven workers, and cost read-ahead and Dask's per-task
    #: time; ``benchmarks/dask_steps.py --streaming`` measures one per work item against one)
    parts_per_worker = 1

    lost_work = "the parts of a lost worker are streamed by another"

    def _load(self, setup: Setup) -> None:
        """Cut the work items into a part per worker; each worker's first pass over its part
        counts the events of each set."""
        self.client.register_plugin(AnalysisPlugin(self.key, self.config, self.base, None),
                                    name=self.key)
        self.run = uuid.uuid4().hex  # this executor's parts, apart from other runs' on a worker
        self._workers = set(self.client.scheduler_info()["workers"])
        items = work_items([r.entries for r in setup.readers], self.kernel.cfg.chunk_size)
        self.parts = parts_of(items, len(self._workers) * self.parts_per_worker)
        # held while the executor lives: each step's task of a part runs where this is
        self._placed = [self.client.submit(_first_pass, self.key, (self.run, k), part,
                                           pure=False)
                        for k, part in enumerate(self.parts)]
        with tqdm(total=len(self.parts), desc=f"first pass on {len(self._workers)} workers",
                  unit="part", disable=not setup.progress, leave=False) as bar:
            for future in self._placed:
                for g, n in enumerate(future.result()):
                    setup.sets[g].n_events += n
                bar.update(1)
        if not sum(s.n_events for s in setup.sets):
            raise DataError(f"{self.kernel.cfg.name}: no events left to analyse (after "
                            "preselection)")
        self.tasks = len(self.parts)
        self.bytes_per_step = 0

    def _submit(self, fn, *args) -> list:
        """A task ``fn(key, (run, part), items, first pass, *args)`` per part: on the worker
        that holds the part's first pass."""
        return [self.client.submit(fn, self.key, (self.run, k), part, placed, *args,
                                   pure=False)
                for k, (part, placed) in enumerate(zip(self.parts, self._placed, strict=True))]

    def map_reduce(self, name: str, args: tuple):
        """Only ``args`` travel to the workers; each streams its part."""
        args = jax.device_get(args)
        with self.connection():
            self._watch_workers()
            total = self._reduce(self._submit(_run, name, args))
        self.bytes_per_step = self.tasks * (len(pickle.dumps(args)) + len(pickle.dumps(total)))
        return total

    def hard_histograms(self, params: dict, samples: list[str], part: str = "test") -> dict:
        params = jax.device_get(params)
        with self.connection():
            self._watch_workers()
            return self._reduce(self._submit(_hard, params, samples, part))

    def parts_read(self) -> dict:
        """``{part: record}`` of every part streamed on a worker so far: the worker, its
        chunks, read-ahead depth, work items read from the files, whether its first pass came
        from the cache, its cache entry and whether that is complete."""
        out: dict = {}
        for records in self.client.run(_part_records, self.key, self.run).values():
            out.update(records)
        return out

    def close(self) -> None:
        if getattr(self, "run", None) is not None and self.client.status == "running":
            try:  # the workers let go of this run's parts (a lost scheduler: nothing to do)
                self.client.run(_forget, self.key, self.run, on_error="ignore")
            except (OSError, TimeoutError):
                pass
            self.run = None
        super().close()
