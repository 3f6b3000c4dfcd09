"""``streaming: auto``: hold the events in memory when they fit the memory budget, stream them
from the files otherwise; and say which, and why.

The events' size in memory is estimated from the first :data:`SAMPLE_EVENTS` events of each
sample (read, checked, preselected and lowered as a run would): bytes per event read, times
the events in the files. Holding events costs more than their own size: the Awkward arrays
stay beside the lowered, padded chunks while those are made, and the fused gradient's step
has memory of its own. :data:`HELD_FACTOR` covers that: on the reference configuration at
1 M events the estimate is 244 MB and the in-memory run's peak RSS 874 MB, of which about
300 MB is the process itself (2.4×).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import awkward as ak
import jax

from diffana import budget, ragged
from diffana.checks import NonFinite, NonFiniteWarning
from diffana.config import AnalysisConfig
from diffana.config.schema import chunked_evaluation_conflict

SAMPLE_EVENTS = 4096  # events of each sample read to estimate the size of all
HELD_FACTOR = 3.0  # peak memory of the in-memory engine over the events' estimated size


class StreamingChoice(NamedTuple):
    """Whether the events are streamed from the files, and why (one line)."""

    streamed: bool
    why: str


def estimated_bytes(readers, plan) -> tuple[int, int]:
    """The estimated bytes of every sample's events in memory (read and lowered), and the
    events read to estimate it."""
    total, sampled = 0.0, 0
    for reader in readers:
        entries = sum(reader.entries)
        first = next((i for i, n in enumerate(reader.entries) if n), None)
        if first is None:
            continue
        n = min(reader.entries[first], SAMPLE_EVENTS)
        size = 0
        for events, weight in _sample(reader, first, n).values():
            size += ak.Array(events).nbytes + weight.nbytes
            if len(weight):
                buffers = ragged.lower(events, plan, weight).buffers
                size += sum(a.nbytes for a in jax.tree_util.tree_leaves(buffers))
        total += size / n * entries
        sampled += n
    return int(total), sampled


def _sample(reader, file: int, n: int) -> dict:
    """The reader's sets of the first ``n`` entries of ``file``, leaving its NaN/inf tally
    as it was (the run reads these events again and counts them then)."""
    had = getattr(reader, "nonfinite", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)
        sets = reader.read_range(file, 0, n)
    reader.nonfinite = had if had is not None else NonFinite()
    return sets


def streaming_choice(cfg: AnalysisConfig, engine: str, readers, plan) -> StreamingChoice:
    """In memory or streamed, and why, for ``streaming: true|false|auto``.

    On Dask workers (``executor: {kind: dask}``) the same choice: each worker holds the
    chunks of its files, or streams them; ``auto`` weighs the events of all the workers
    together against ``memory_limit`` (default: half of this machine's memory available, what
    a ``LocalCluster``'s workers share; on a cluster of other machines, give what its workers
    hold).
    """
    if engine == "awkward":
        return StreamingChoice(False, "in memory: the awkward engine holds the events")
    held, streamed = (("in memory on the Dask workers", "streamed on the Dask workers")
                      if cfg.executor.kind == "dask" else ("in memory", "streamed"))
    if cfg.streaming is False:
        return StreamingChoice(False, f"{held}: streaming: false")
    if chunked_evaluation_conflict(engine, cfg.gradient) == "gradient":
        return StreamingChoice(False, f"{held}: gradient: fused holds every chunk at once")
    if cfg.streaming is True:
        return StreamingChoice(True, f"{streamed}: streaming: true")
    limit, how = budget.memory_limit(cfg.memory_limit)
    if limit is None:
        return StreamingChoice(False, f"{held}: no {how}")
    size, sampled = estimated_bytes(readers, plan)
    need = int(size * HELD_FACTOR)
    fits = need <= limit
    where = held if fits else streamed
    return StreamingChoice(not fits, (
        f"{where}: the events need about {budget.human_bytes(need)} in memory (estimated from "
        f"their first {sampled} events), {'within' if fits else 'more than'} the "
        f"{budget.human_bytes(limit)} of {how}"))
