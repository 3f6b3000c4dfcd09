"""Gradient steps on Dask (``executor: {kind: dask}``): the chunks live on the workers.

::

    client (Analysis without events, optax)        workers (one analysis each, no events)
      ranges of the input files      ──────────▶  read (uproot) → lower → pad, once;
                                                   kept in worker memory as Dask futures
      u, θ (each step)               ──────────▶  yields + Jacobian (or VJP) of their
                                                   chunks: the jitted chunk function
      Σ (tree reduction of small results) ◀────

The client holds the futures of the lowered chunks, so a chunk lost with its worker is
read and lowered again, on a surviving or restarted worker, from its lineage (Dask's own
recovery); the client logs which workers left and joined. Errors raised on a worker
(a file it cannot read) reach the client as the same :class:`~diffana.exceptions.DataError`.

Example (``LocalCluster`` of two processes)::

    >>> cfg = load("configs/ttbar_vs_wjets.yaml")                     # doctest: +SKIP
    >>> cfg = cfg.model_copy(update={"executor": Executor(kind="dask", workers=2)})  # doctest: +SKIP
    >>> ana = Analysis(cfg, "configs")                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import pickle
import weakref
from pathlib import Path

import jax
from distributed import Client, LocalCluster, WorkerPlugin
from tqdm.auto import tqdm

from diffana.config import load_dict

log = logging.getLogger("diffana")

# per worker process: {key: (config JSON, base directory, layout)} and the analyses built
_SPECS: dict[str, tuple] = {}
_KERNELS: dict[str, object] = {}


class AnalysisPlugin(WorkerPlugin):
    """Gives every worker, present and future (a restarted one too), the configuration and
    chunk shape its analysis is built from."""

    def __init__(self, key: str, config: str, base: str, layout: dict | None):
        self.key, self.config, self.base, self.layout = key, config, base, layout

    def setup(self, worker) -> None:
        if _SPECS.get(self.key) != (self.config, self.base, self.layout):
            _SPECS[self.key] = (self.config, self.base, self.layout)
            _KERNELS.pop(self.key, None)


def _kernel(key: str):
    """This worker's analysis of configuration ``key``: no events, compiled for the layout."""
    ana = _KERNELS.get(key)
    if ana is None:
        from diffana.analysis import Analysis

        config, base, layout = _SPECS[key]
        cfg = load_dict(json.loads(config), source="executor", base_dir=Path(base))
        ana = _KERNELS[key] = Analysis(cfg, base, progress=False, layout=layout or {})
    return ana


def _lower(key: str, spec: tuple) -> list:
    return _kernel(key).lower_range(spec)


def _sizes(key: str, lowered: list) -> tuple[list[dict], dict[int, int]]:
    """Axis sizes of each lowered chunk, and the events of each set."""
    from diffana import ragged

    plan = _kernel(key).plan
    counts: dict[int, int] = {}
    for g, buffers in lowered:
        counts[g] = counts.get(g, 0) + len(buffers["weight"])
    return [ragged.axis_sizes(b, plan) for _, b in lowered], counts


def _pad(key: str, lowered: list) -> list:
    ana = _kernel(key)
    return [ana.device_chunk(g, b) for g, b in lowered]


def _run(key: str, name: str, args: tuple, chunks: list):
    """``_jit_<name>(*args, chunk)`` summed over one task's chunks, as NumPy."""
    return jax.device_get(_kernel(key).sum_over(name, args, (c for _, _, c in chunks)))


def _hard(key: str, params: dict, chunks: list) -> dict:
    ana = _kernel(key)
    return ana.fill_hard(ana.chunk_parts(chunks, params, True))


def _add(a, b):
    """Sum of two results (NumPy pytrees, or ``hist`` histograms, which add)."""
    return jax.tree_util.tree_map(lambda x, y: x + y, a, b)  # a histogram is a leaf


class DaskChunks:
    """The chunks of an analysis on Dask workers, and the map-reduce of each step.

    ``ana``: the client's analysis (events not read); its ``cfg.executor`` says which
    cluster. The chunks are read, lowered and padded on the workers once, here.
    """

    def __init__(self, ana, base: Path, progress: bool):
        ex = ana.cfg.executor
        self._cluster = None
        if ex.address:
            self.client = Client(ex.address)
        else:
            self._cluster = LocalCluster(n_workers=ex.workers, threads_per_worker=1,
                                         processes=True, dashboard_address=None)
            self.client = Client(self._cluster)
        self._finalizer = weakref.finalize(self, _close, self.client, self._cluster)
        # the workers read the same files: absolute paths, no generator, one set per chunk
        data = ana.cfg.model_dump(mode="json", exclude_none=True)
        data.pop("generate", None)
        for name, r in zip(ana.cfg.samples, ana._readers, strict=True):
            data["samples"][name]["files"] = [str(Path(f).resolve()) for f in r.files]
        data.update(streaming=True, executor={"kind": "local"})
        self.config = json.dumps(data)  # key order matters (collections build on earlier ones)
        self.base = str(Path(base).resolve())
        self.key = f"diffana-{abs(hash((self.config, self.base))):x}"
        try:
            self._load(ana, progress)
        except BaseException:
            self.close()
            raise

    def _load(self, ana, progress: bool) -> None:
        """Read, lower and pad the chunks on the workers; count the events of each set."""
        self.client.register_plugin(AnalysisPlugin(self.key, self.config, self.base, None),
                                    name="diffana")
        self._workers = set(self.client.scheduler_info()["workers"])
        specs = ana.range_specs()
        lowered = self.client.map(_lower, [self.key] * len(specs), specs, pure=False)
        sizes, done = [], self.client.map(_sizes, [self.key] * len(specs), lowered)
        with tqdm(total=len(specs), desc=f"lowering on {len(self._workers)} workers",
                  unit="chunk", disable=not progress, leave=False) as bar:
            for future in done:
                chunk_sizes, counts = future.result()
                sizes += chunk_sizes
                for g, n in counts.items():
                    ana._group_events(g).n_events += n
                bar.update(1)
        ana._apply_layout(ana.chunk_layout(sizes))
        self.client.register_plugin(AnalysisPlugin(self.key, self.config, self.base, ana.layout),
                                    name="diffana")
        self.chunks = self.client.map(_pad, [self.key] * len(specs), lowered)
        del lowered  # the padded chunks' lineage keeps what a recovery needs
        self.tasks = len(self.chunks)
        self.bytes_per_step = 0

    def _watch_workers(self) -> None:
        """Log the workers that left or joined since the last step."""
        now = set(self.client.scheduler_info()["workers"])
        left, joined = self._workers - now, now - self._workers
        if left or joined:
            log.warning("dask: worker(s) %s left, %s joined (%d now); chunks held by a lost "
                        "worker are read and lowered again from their files",
                        sorted(left) or "none", sorted(joined) or "none", len(now))
            tqdm.write(f"dask: {len(left)} worker(s) left, {len(joined)} joined; lost chunks "
                       "are read again")
        self._workers = now

    def _reduce(self, futures: list):
        """Pairwise (tree) sum on the workers; the total comes back."""
        while len(futures) > 1:
            pairs = [futures[i:i + 2] for i in range(0, len(futures), 2)]
            futures = [self.client.submit(_add, *p) if len(p) == 2 else p[0] for p in pairs]
        return futures[0].result()

    def map_reduce(self, name: str, args: tuple):
        """``Σ_chunks _jit_<name>(*args, chunk)``: only ``args`` travel to the workers."""
        self._watch_workers()
        args = jax.device_get(args)
        futures = self.client.map(_run, [self.key] * self.tasks, [name] * self.tasks,
                                  [args] * self.tasks, self.chunks, pure=False)
        total = self._reduce(futures)
        # what travelled: the arguments to every task, and a result back from each
        self.bytes_per_step = self.tasks * (len(pickle.dumps(args)) + len(pickle.dumps(total)))
        return total

    def hard_histograms(self, params: dict) -> dict:
        self._watch_workers()
        params = jax.device_get(params)
        futures = self.client.map(_hard, [self.key] * self.tasks, [params] * self.tasks,
                                  self.chunks, pure=False)
        return self._reduce(futures)

    def close(self) -> None:
        self._finalizer()


def _close(client: Client, cluster: LocalCluster | None) -> None:
    client.close()
    if cluster is not None:
        cluster.close()
