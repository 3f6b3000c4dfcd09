"""``streaming: auto``: hold the events in memory when they fit the memory budget, stream them
from the files otherwise; and say which, and why.

The events' size in memory is estimated from the first chunk of each sample's first file
(read, preselected and lowered as a run would): bytes per event read, times the events in
the files. Holding events costs more than their own size: the Awkward arrays stay (the
awkward engine, the checks) and the lowered, padded chunks sit beside them, and the fused
gradient's step keeps one more chunk's intermediate values per chunk. :data:`HELD_FACTOR`
covers that (measured: peak RSS over the estimate, reference configuration at 1 M events).
"""

from __future__ import annotations

from typing import NamedTuple

import awkward as ak

from diffana import budget, ragged
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
        for events, weight in reader.read_range(first, 0, n).values():
            size += ak.Array(events).nbytes + weight.nbytes
            if len(weight):
                size += sum(a.nbytes for a in _leaves(ragged.lower(events, plan, weight).buffers))
        total += size / n * entries
        sampled += n
    return int(total), sampled


def streaming_choice(cfg: AnalysisConfig, engine: str, readers, plan) -> StreamingChoice:
    """In memory or streamed, and why, for ``streaming: true|false|auto``."""
    if engine == "awkward":
        return StreamingChoice(False, "in memory: the awkward engine holds the events")
    if cfg.executor.kind == "dask":
        return StreamingChoice(False, "on the Dask workers: each holds the chunks of its files")
    if cfg.streaming is False:
        return StreamingChoice(False, "in memory: streaming: false")
    if chunked_evaluation_conflict(engine, cfg.gradient) == "gradient":
        return StreamingChoice(False, "in memory: gradient: fused holds every chunk at once")
    if cfg.streaming is True:
        return StreamingChoice(True, "streamed: streaming: true")
    limit, how = budget.memory_limit(cfg.memory_limit)
    if limit is None:
        return StreamingChoice(False, f"in memory: no {how}")
    size, sampled = estimated_bytes(readers, plan)
    need = int(size * HELD_FACTOR)
    fits = need <= limit
    where = "in memory" if fits else "streamed"
    return StreamingChoice(not fits, (
        f"{where}: the events need about {budget.human_bytes(need)} in memory (estimated from "
        f"their first {sampled} events), {'within' if fits else 'more than'} the "
        f"{budget.human_bytes(limit)} of {how}"))


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree
