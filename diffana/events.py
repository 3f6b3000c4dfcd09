"""Events: reading, event weights and their normalisation, computed variations.

A sample's :class:`SampleReader` turns what uproot reads into *event sets*: the events and
their normalised weights (``σ·L/N``, :func:`sample_norm`), after the NaN/inf checks and the
optional preselection, and the events of each computed (``scale``/``smear``) variation.
Samples that differ from a set only by a per-event factor (``reweight``, ``weight``) share
it (see :func:`diffana.plan.members`). The same reader serves in memory (:meth:`SampleReader.read`)
and chunk by chunk (:meth:`SampleReader.chunks`, :meth:`SampleReader.read_range`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import awkward as ak
import numpy as np
from scipy.special import ndtri

from diffana import checks, io, ragged, split
from diffana.config import AnalysisConfig, resolve_path
from diffana.exceptions import DataError, InputChanged
from diffana.plan import Plan, Variant, members

WEIGHTED = ("genweight", "weight")  # normalisations that read the genWeight branch


def sample_norm(cross_section: float, luminosity: float, total: float) -> float:
    """The weight per event (or per unit genWeight) of a sample: ``σ·L/N``.

    ``total`` is the number of events the sample was generated with (or the sum of its
    generator weights); every normalisation in diffana is this one expression.
    """
    return cross_section * luminosity / total


def branches_for(cfg: AnalysisConfig, plan: Plan, sample: str) -> list[str]:
    """The branches to read for ``sample``: the plan's, ``genWeight`` where the
    normalisation uses it, and the branches that computed variations vary."""
    branches = plan.branches + (["genWeight"] if cfg.samples[sample].normalisation in WEIGHTED
                                else [])
    return branches + [b for v in cfg.variations.values() for b in _varied_branch(v)]


class EventSet:
    """One set of events after reading (and preselection, and a computed variation).

    Several samples can share one set: a ``reweight`` or ``weight`` variation differs from
    its nominal only by a per-event factor. ``lowered`` lowers the whole set, lazily (the
    awkward engine; cross-checks); the compiled engine lowers all sets in chunks.
    """

    def __init__(self, events: ak.Array, weight: np.ndarray, the_plan: Plan):
        self.events = events
        self.weight = np.asarray(weight, dtype=np.float64)
        self.plan = the_plan

    def __len__(self) -> int:
        return len(self.weight)

    @cached_property
    def lowered(self) -> ragged.Lowered:
        return ragged.lower(self.events, self.plan, self.weight)



@dataclass
class SampleEvents:
    """One sample after reading: its events and how its event weights derive from them.

    ``variant``: how its weights derive from the event set's (:data:`diffana.plan.Variant`).
    """

    name: str
    files: list[Path]
    events: EventSet
    norm: float  # σ·L/N_total (or σ·L/ΣgenWeight per unit genWeight)
    variant: Variant = None

    @property
    def lowered(self) -> ragged.Lowered:
        return self.events.lowered

    @property
    def n_events(self) -> int:
        return len(self.events)


class SampleReader:
    """How one sample's events become event sets: weights, preselection, computed variations.

    Applied once to all of a sample's events (in memory), or to each chunk as it is read
    (``streaming: true``); both give the same events and weights.
    """

    def __init__(self, cfg: AnalysisConfig, name: str, plan: Plan, base: Path,
                 generated: Path | None):
        s = cfg.samples[name]
        self.cfg, self.name, self.plan = cfg, name, plan
        self.files = [resolve_path(f, base, generated) for f in s.files]
        self.tree = s.tree or cfg.tree
        self.normalisation = s.normalisation
        self.branches = branches_for(cfg, plan, name)
        #: each input file's identity when the run started (:func:`diffana.io.identity`)
        self.inputs = [io.identity(f, self.tree) for f in self.files]
        self.entries = [i["entries"] for i in self.inputs]  # each file opened once
        if s.normalisation == "events":
            if not (s.n_total or sum(self.entries)):
                raise DataError(f"sample {name!r}: no events in {self.tree!r} of "
                                f"{', '.join(map(str, self.files))} (0 entries); expected at "
                                "least one, or n_total")
            self.norm = sample_norm(s.cross_section, cfg.luminosity, s.n_total or sum(self.entries))
        elif s.normalisation == "genweight":
            self.norm = sample_norm(s.cross_section, cfg.luminosity,
                                    io.sum_of_weights(self.files, self.tree))
        else:
            self.norm = 1.0
        # the nominal events are the set None; reweight and weight variations share them;
        # a scale or smear variation is a set of its own
        self.members = members(cfg, name)
        # set of a scale or smear variation: the variation
        self.computed = {m.event_set: cfg.variation_samples()[m.sample][1]
                         for m in self.members if m.event_set is not None}

    def check_unchanged(self) -> None:
        """Raise :class:`~diffana.exceptions.InputChanged` if an input file's size or
        modification time is not what it was when the reader was made."""
        for recorded in self.inputs:
            path = Path(recorded["path"])
            try:
                stat = path.stat()
            except OSError as err:
                raise InputChanged(f"{path}: input file gone since the run started "
                                   f"({err.strerror})") from None
            if (stat.st_size, stat.st_mtime_ns) != (recorded["size"], recorded["mtime_ns"]):
                raise InputChanged(f"{path}: input file changed since the run started (size "
                                   f"{recorded['size']} → {stat.st_size} bytes); restore it, or "
                                   "start a new run")

    def sets(self, events: ak.Array, file_index: np.ndarray, entry: np.ndarray) -> dict:
        """``{set: (events, weight)}`` of these events (``file_index``/``entry``: where each
        event is in the sample's files, which seeds a smearing)."""
        # structure and NaN/inf checks; dropped counts add up on self.nonfinite
        events, file_index, entry = checks.check_chunk(self, events, file_index, entry)
        n = len(events)
        if self.normalisation == "none":
            weight = np.ones(n)
        elif self.normalisation == "events":
            weight = np.full(n, self.norm)
        else:
            weight = self.norm * np.asarray(events["genWeight"], dtype=np.float64)
        if self.cfg.preselect:  # after the normalisation, which counts every event read
            keep = ragged.structural_keep(events, self.plan, self.cfg.selection)
            events, weight, file_index, entry = events[keep], weight[keep], file_index[keep], entry[keep]
        if self.cfg.split is not None:  # each event's part: training or test (diffana.split)
            test = split.is_test(self.cfg.split.seed, self.cfg.split.test_fraction,
                                    [f.name for f in self.files], file_index, entry)
            events = ak.with_field(events, test, split.COLUMN)
        out = {None: (events, weight)}
        for key, variation in self.computed.items():
            out[key] = (vary_branch(self.cfg, self.name, variation, events, file_index, entry),
                        weight)
        return out

    def read(self, step_size: int, progress=None) -> dict:
        """All events at once: ``{set: (events, weight)}``."""
        events = io.read_branches(self.files, self.tree, self.branches, step_size, progress)
        file_index = np.repeat(np.arange(len(self.files)), self.entries)
        entry = np.concatenate([np.arange(e) for e in self.entries])
        return self.sets(events, file_index, entry)

    def read_range(self, file: int, start: int, stop: int) -> dict:
        """Entries ``[start, stop)`` of file ``file``: ``{set: (events, weight)}``."""
        events = io.read_range(self.files[file], self.tree, self.branches, start, stop)
        n = len(events)
        return self.sets(events, np.full(n, file), start + np.arange(n))

    def chunks(self, chunk_size: int):
        """``(events read, {set: (events, weight)})`` chunk by chunk from the files."""
        for index, first, events in io.iterate_branches(self.files, self.tree, self.branches,
                                                        chunk_size):
            n = len(events)
            yield n, self.sets(events, np.full(n, index), first + np.arange(n))


class StreamedSet:
    """An event set that is read from its files chunk by chunk, never held in memory."""

    def __init__(self, reader: SampleReader, key: str | None):
        self.reader, self.key = reader, key
        self.n_events = 0  # counted by the first pass over the files

    def __len__(self) -> int:
        return self.n_events


def changed_input(recorded: list[dict], current: list[dict]) -> str | None:
    """The first input whose identity differs between two records, as a one-line reason."""
    now = {c["path"]: c for c in current}
    for before in recorded:
        after = now.get(before["path"])
        if after is None:
            return f"{before['path']}: no longer an input of the configuration"
        diff = [f"{k} {before[k]} → {after[k]}" for k in ("size", "mtime_ns", "uuid", "entries")
                if before[k] != after[k]]
        if diff:
            return f"{before['path']}: input file changed since the run started ({', '.join(diff)})"
    return None


def _varied_branch(var) -> list[str]:
    spec = var.scale or var.smear
    return [spec["branch"]] if spec else []


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def addressed_normal(key: str, file_index, entry, position) -> np.ndarray:
    """Standard normal numbers addressed by ``(key, file, entry, position in the event)``.

    The smearing of an object must not depend on how the files are chunked (in memory,
    streamed, on another worker). NumPy's generators are sequential streams that cannot
    be addressed per element; a counter-based draw can: a SplitMix64 hash of the address,
    mapped through the normal quantile.
    """
    seed = np.uint64(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        h = _mix(seed ^ np.asarray(file_index, dtype=np.uint64))
        h = _mix(h ^ np.asarray(entry, dtype=np.uint64))
        h = _mix(h ^ np.asarray(position, dtype=np.uint64))
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return ndtri(u)


def vary_branch(cfg: AnalysisConfig, sample: str, name: str, events, file_index, entry):
    """The events of a ``scale`` or ``smear`` variation (see ``config.Variation``)."""
    var = cfg.variations[name]
    branch = (var.scale or var.smear)["branch"]
    values = events[branch]
    if var.scale is not None:
        varied = values * float(var.scale["factor"])
    else:
        # Seeded per (run seed, sample, variation) and addressed per object: the same
        # object gets the same smearing however the events are read.
        counts = ak.to_numpy(ak.num(values)) if values.ndim > 1 else None
        if counts is not None:  # a collection: each object's event and position in it
            file_index, entry = np.repeat(file_index, counts), np.repeat(entry, counts)
            position = ak.to_numpy(ak.flatten(ak.local_index(values)))
            values = ak.flatten(values)
        else:
            position = np.zeros(len(values))
        normal = addressed_normal(f"{cfg.seed}/{sample}/{name}", file_index, entry, position)
        varied = ak.to_numpy(values) * (1.0 + float(var.smear["sigma"]) * normal)
        if counts is not None:
            varied = ak.unflatten(varied, counts)
    return ak.with_field(events, varied, branch)
