"""Gradient steps on Dask (``executor: {kind: dask}``): the chunks live on the workers.

::

    client (the analysis, optax)                   workers (a plan and work items each)
      work items (ranges of files)   ──────────▶  read (uproot) → lower → pad, once;
                                                   kept in worker memory as Dask futures
      u, θ (each step)               ──────────▶  yields + Jacobian (or VJP) of their
                                                   chunks: the compiled chunk function
      Σ (tree reduction of small results) ◀────

The client holds the futures of the lowered chunks, so a chunk lost with its worker is
read and lowered again, on a surviving or restarted worker, from its lineage (Dask's own
recovery); the client logs which workers left and joined. Errors raised on a worker
(a file it cannot read) reach the client as the same :class:`~diffana.exceptions.DataError`.

Example (``LocalCluster`` of two processes)::

    >>> cfg = load("configs/ttbar_vs_wjets.yaml")  # doctest: +SKIP
    >>> dask = Executor(kind="dask", workers=2)  # doctest: +SKIP
    >>> cfg = cfg.model_copy(update={"executor": dask})  # doctest: +SKIP
    >>> ana = Analysis(cfg, "configs")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import weakref
from concurrent.futures import CancelledError
from contextlib import contextmanager
from pathlib import Path

import jax
from distributed import Client, LocalCluster, WorkerPlugin
from tqdm.auto import tqdm

from diffana import ragged
from diffana.chunks import (
    ChunkLayout,
    WorkItem,
    compute_device,
    lower_sets,
    one_set_chunk,
    single_set_layout,
    work_items,
)
from diffana.config import load_dict
from diffana.events import SampleReader
from diffana.exceptions import DiffanaError, ExecutorLost
from diffana.executors.chunked import ChunkedExecutor, sum_over
from diffana.executors.setup import Setup
from diffana.executors.streamed import region_parts
from diffana.plan import ParameterSpace, build, event_sets
from diffana.stages import Kernel, fill_hard

log = logging.getLogger("diffana")

# per worker process: {key: (config JSON, base directory, layout)} and the contexts built
_SPECS: dict[str, tuple] = {}
_CONTEXTS: dict[str, WorkerContext] = {}


class AnalysisPlugin(WorkerPlugin):
    """Gives every worker, present and future (a restarted one too), the configuration and
    chunk layout its context is built from."""

    def __init__(self, key: str, config: str, base: str, layout: ChunkLayout | None):
        self.key, self.config, self.base, self.layout = key, config, base, layout

    def setup(self, worker) -> None:
        if _SPECS.get(self.key) != (self.config, self.base, self.layout):
            _SPECS[self.key] = (self.config, self.base, self.layout)
            _CONTEXTS.pop(self.key, None)


class WorkerContext:
    """What a worker holds for one configuration: its plan, readers and compiled kernel."""

    def __init__(self, config: str, base: str, layout: ChunkLayout | None):
        self.base = Path(base)
        cfg = load_dict(json.loads(config), source="executor", base_dir=self.base)
        plan = build(cfg)
        groups, self.set_index = event_sets(cfg)
        self.readers = [SampleReader(cfg, name, plan, Path(base), None) for name in cfg.samples]
        self.kernel = Kernel.of(cfg, plan, ParameterSpace.of(cfg), groups)
        if layout is not None:
            self.kernel = self.kernel.with_layout(layout)
        self.device = compute_device(cfg.device)

    def lower(self, item: WorkItem) -> list:
        """``[(set, lowered buffers)]`` of one work item."""
        reader = self.readers[item.reader]
        return lower_sets(self.kernel.plan, self.set_index, reader.name,
                          reader.read_range(item.file, item.start, item.stop))

    def pad(self, lowered: list) -> list:
        k = self.kernel
        return [one_set_chunk(k.layout, k.plan, g, b, len(k.groups), self.device, k.cfg.name)
                for g, b in lowered]


def worker_context(key: str) -> WorkerContext:
    """This worker's context of the analysis ``key`` (built on first use)."""
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = _CONTEXTS[key] = WorkerContext(*_SPECS[key])
    return ctx


def _lower(key: str, item: WorkItem) -> list:
    return worker_context(key).lower(item)


def _sizes(key: str, lowered: list) -> tuple[list[dict], dict[int, int]]:
    """Axis sizes of each lowered chunk, and the events of each set."""
    plan = worker_context(key).kernel.plan
    counts: dict[int, int] = {}
    for g, buffers in lowered:
        counts[g] = counts.get(g, 0) + len(buffers["weight"])
    return [ragged.axis_sizes(b, plan) for _, b in lowered], counts


def _pad(key: str, lowered: list) -> list:
    return worker_context(key).pad(lowered)


def _run(key: str, name: str, args: tuple, chunks: list):
    """``CHUNK_FUNCTIONS[name](kernel, *args, chunk)`` summed over one task's chunks, as NumPy."""
    kernel = worker_context(key).kernel
    return jax.device_get(sum_over(name, kernel, args, (c for _, _, c in chunks)))


def _hard(key: str, params: dict, samples: list[str], part: str, chunks: list) -> dict:
    kernel = worker_context(key).kernel.for_part(part)
    return fill_hard(kernel, samples, region_parts(kernel, chunks, params, True), params)


#: the loggers of the Dask client that report a lost scheduler with a traceback (the batched
#: stream's "Batched Comm Closed", at INFO, when it notices first)
_CLIENT_LOGGERS = ("distributed.client", "distributed.batched")


class _ConnectionErrors(logging.Filter):
    """Drops the Dask client's own reports of a lost scheduler (its reconnection attempts,
    its closed streams): :meth:`DaskExecutor.connection` reports the loss in one line
    instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        # refused connections, and the attempt cancelled when the client closes
        lost = isinstance(error, (OSError, asyncio.CancelledError, CancelledError))
        return not (lost or "reconnect" in record.getMessage())


def _add(a, b):
    """Sum of two results (NumPy pytrees, or ``hist`` histograms, which add; None: a task
    without events, which adds nothing)."""
    if a is None or b is None:
        return b if a is None else a
    return jax.tree_util.tree_map(lambda x, y: x + y, a, b)  # a histogram is a leaf


class DaskExecutor(ChunkedExecutor):
    """The chunks on Dask workers, and the map-reduce of each step.

    ``cfg.executor`` says which cluster. The chunks are read, lowered and padded on the
    workers once, here (:meth:`_load`; streamed instead:
    :class:`~diffana.executors.dask_streamed.DaskStreamedExecutor`).
    """

    #: what happens to the work of a worker that left (said in the log)
    lost_work = "chunks held by a lost worker are read and lowered again from their files"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        cfg = self.kernel.cfg
        ex = cfg.executor
        self._cluster = None
        if ex.address:
            self.client = Client(ex.address)
        else:
            self._cluster = LocalCluster(n_workers=ex.workers, threads_per_worker=1,
                                         processes=True, dashboard_address=":0")
            self.client = Client(self._cluster)
        quiet = _ConnectionErrors()
        for name in _CLIENT_LOGGERS:
            logging.getLogger(name).addFilter(quiet)
        self._finalizer = weakref.finalize(self, _close, self.client, self._cluster, quiet)
        self.address = self.client.scheduler.address
        # the workers read the same files: absolute paths, no generator, one set per chunk
        data = cfg.model_dump(mode="json", exclude_none=True)
        data.pop("generate", None)
        for r in setup.readers:
            data["samples"][r.name]["files"] = [str(Path(f).resolve()) for f in r.files]
        data.update(streaming=True, executor={"kind": "local"})
        self.config = json.dumps(data)  # key order matters (collections build on earlier ones)
        self.base = str(Path(setup.base).resolve())
        # the files as the client found them: a file touched between runs is another key, so
        # a worker that served an earlier run builds its readers (and cache keys) again
        inputs = json.dumps([r.inputs for r in setup.readers], default=str)
        # held and streamed runs of one configuration keep apart contexts (and plugins, so
        # that a restarted worker gets each)
        kind = type(self).__name__
        self.key = f"diffana-{abs(hash((self.config, self.base, inputs, kind))):x}"
        try:
            self._load(setup)
        except BaseException:
            self.close()
            raise

    def _load(self, setup: Setup) -> None:
        """Read, lower and pad the chunks on the workers; count the events of each set."""
        self.client.register_plugin(AnalysisPlugin(self.key, self.config, self.base, None),
                                    name=self.key)
        self._workers = set(self.client.scheduler_info()["workers"])
        items = work_items([r.entries for r in setup.readers], self.kernel.cfg.chunk_size)
        lowered = self.client.map(_lower, [self.key] * len(items), items, pure=False)
        sizes, done = [], self.client.map(_sizes, [self.key] * len(items), lowered)
        with tqdm(total=len(items), desc=f"lowering on {len(self._workers)} workers",
                  unit="chunk", disable=not setup.progress, leave=False) as bar:
            for future in done:
                chunk_sizes, counts = future.result()
                sizes += chunk_sizes
                for g, n in counts.items():
                    setup.sets[g].n_events += n
                bar.update(1)
        cfg = self.kernel.cfg
        layout = single_set_layout(sizes, cfg.chunk_size, cfg.name)
        self.kernel = self.kernel.with_layout(layout)
        self.client.register_plugin(AnalysisPlugin(self.key, self.config, self.base, layout),
                                    name=self.key)
        self.chunks = self.client.map(_pad, [self.key] * len(items), lowered)
        del lowered  # the padded chunks' lineage keeps what a recovery needs
        #: Dask tasks per step (one per work item)
        self.tasks = len(self.chunks)
        #: bytes that travelled in the last step: arguments out, results back
        self.bytes_per_step = 0

    @contextmanager
    def connection(self):
        """Turns the loss of the scheduler (or of the connection to it) into
        :class:`~diffana.exceptions.ExecutorLost`: ``diffana run`` checkpoints and stops."""
        try:
            yield
        except (CancelledError, OSError, TimeoutError) as err:
            lost = getattr(err, "reason", None) == "scheduler-connection-lost"
            if not lost and self.client.status == "running":
                raise  # the scheduler is there: an error of the task itself
            self.close()  # the client stops trying to reconnect (and logging each try)
            raise ExecutorLost(f"dask scheduler {self.address}: connection lost "
                               f"({type(err).__name__}); continue on a running scheduler "
                               "(--address) or here (--executor local)") from None

    def _watch_workers(self) -> None:
        """Log the workers that left or joined since the last step."""
        now = set(self.client.scheduler_info()["workers"])
        left, joined = self._workers - now, now - self._workers
        if left or joined:
            log.warning("dask: worker(s) %s left, %s joined (%d now); %s",
                        sorted(left) or "none", sorted(joined) or "none", len(now),
                        self.lost_work)
            tqdm.write(f"dask: {len(left)} worker(s) left, {len(joined)} joined; "
                       f"{self.lost_work}")
        self._workers = now

    def _reduce(self, futures: list):
        """Pairwise (tree) sum on the workers; the total comes back."""
        while len(futures) > 1:
            pairs = [futures[i:i + 2] for i in range(0, len(futures), 2)]
            futures = [self.client.submit(_add, *p) if len(p) == 2 else p[0] for p in pairs]
        return futures[0].result()

    def map_reduce(self, name: str, args: tuple):
        """Only ``args`` travel to the workers; the chunks stay there."""
        args = jax.device_get(args)
        with self.connection():
            self._watch_workers()
            futures = self.client.map(_run, [self.key] * self.tasks, [name] * self.tasks,
                                      [args] * self.tasks, self.chunks, pure=False)
            total = self._reduce(futures)
        self.bytes_per_step = self.tasks * (len(pickle.dumps(args)) + len(pickle.dumps(total)))
        return total

    def cutflow_parts(self, params: dict):
        return None  # the events are on the workers

    def event_parts(self, params: dict, hard: bool, part: str | None = None):
        raise DiffanaError("the events of each sample are on the Dask workers; per-event "
                           "values need executor: local")

    def hard_histograms(self, params: dict, samples: list[str], part: str = "test") -> dict:
        params = jax.device_get(params)
        with self.connection():
            self._watch_workers()
            futures = self.client.map(_hard, [self.key] * self.tasks, [params] * self.tasks,
                                      [samples] * self.tasks, [part] * self.tasks, self.chunks,
                                      pure=False)
            return self._reduce(futures)

    def close(self) -> None:
        self._finalizer()


def _close(client: Client, cluster: LocalCluster | None, quiet: logging.Filter) -> None:
    client.close(timeout=10)  # bounded: a client that lost its scheduler waits for none
    if cluster is not None:
        cluster.close()
    for name in _CLIENT_LOGGERS:
        logging.getLogger(name).removeFilter(quiet)
