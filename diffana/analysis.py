"""The analysis: stages composed from parameters θ to the objective.

::

    read (uproot) → lower (structure once) → select (soft weights) → observe → histogram (KDE)
      → model (HistFactory spec, differentiable logpdf) → infer (objective)

Every stage after lowering is a pure JAX function of ``(params, events)``; the objective is
their composition and ``jax.grad`` applies the chain rule across them.

Example (the Python API in a few lines; ``examples/python_api.py`` runs a whole optimisation):

    >>> from diffana import Analysis, load_config              # doctest: +SKIP
    >>> ana = Analysis(load_config("configs/ttbar_vs_wjets.yaml"))  # doctest: +SKIP
    >>> ana.objective(ana.initial_params())                     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri
from tqdm.auto import tqdm

from diffana import checks, infer, io, observe, ragged, select
from diffana import spec as specmod
from diffana.config import AnalysisConfig, resolve_path
from diffana.exceptions import ConfigError, DataError, DiffanaError
from diffana.generate import ensure_generated
from diffana.histogram import empty_histogram, kde_histogram
from diffana.model import Model

MAXIMISED = {"discovery_significance", "asimov_significance"}
WEIGHTED = ("genweight", "weight")  # normalisations that read the genWeight branch
KDE_BLOCK = 256  # events per histogram block of the compiled engine (see _prepare_chunks)
STREAM_FORWARD_MAX = 8  # streaming, gradient auto: forward mode up to this many parameters


class EventSet:
    """One set of events after reading (and preselection, and a computed variation).

    Several samples can share one set: a ``reweight`` or ``weight`` variation differs from
    its nominal only by a per-event factor. ``lowered`` lowers the whole set, lazily (the
    awkward engine; cross-checks); the compiled engine lowers all sets in chunks.
    """

    def __init__(self, events: ak.Array, weight: np.ndarray, the_plan: ragged.Plan):
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

    ``variant`` is ``None`` for the events as they are, ``("reweight", observable, slope)``
    for weights × ``(1 + slope · observable)``, ``("weight", factor)`` for weights × factor.
    """

    name: str
    files: list[Path]
    events: EventSet
    norm: float  # σ·L/N_total (or σ·L/ΣgenWeight per unit genWeight)
    variant: tuple | None = None

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

    def __init__(self, cfg: AnalysisConfig, name: str, plan: ragged.Plan, base: Path,
                 generated: Path | None):
        s = cfg.samples[name]
        self.cfg, self.name, self.plan = cfg, name, plan
        self.files = [resolve_path(f, base, generated) for f in s.files]
        self.tree = s.tree or cfg.tree
        self.normalisation = s.normalisation
        self.branches = plan.branches + (["genWeight"] if s.normalisation in WEIGHTED else [])
        self.branches += [b for v in cfg.variations.values() for b in _varied_branch(v)]
        self.entries = [io.num_entries([f], self.tree) for f in self.files]
        if s.normalisation == "events":
            if not (s.n_total or sum(self.entries)):
                raise DataError(f"sample {name!r}: no events in {self.tree!r} of "
                                f"{', '.join(map(str, self.files))} (0 entries); expected at "
                                "least one, or n_total")
            self.norm = s.cross_section * cfg.luminosity / (s.n_total or sum(self.entries))
        elif s.normalisation == "genweight":
            self.norm = s.cross_section * cfg.luminosity / io.sum_of_weights(self.files, self.tree)
        else:
            self.norm = 1.0
        # (sample, event set, variant): the nominal events are set None; reweight and
        # weight variations share them; a scale or smear variation is a set of its own
        self.members: list[tuple[str, str | None, tuple | None]] = [(name, None, None)]
        self.computed: dict[str, str] = {}  # set of a scale or smear variation: the variation
        for vname, (sample, variation) in cfg.variation_samples().items():
            if sample != name:
                continue
            var = cfg.variations[variation]
            if var.reweight is not None:  # same events, a soft per-event factor
                variant = ("reweight", str(var.reweight["observable"]),
                           float(var.reweight["slope"]))
                self.members.append((vname, None, variant))
            elif var.weight is not None:  # same events, a constant factor
                self.members.append((vname, None, ("weight", float(var.weight))))
            else:
                self.members.append((vname, vname, None))
                self.computed[vname] = variation

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
        out = {None: (events, weight)}
        for key, variation in self.computed.items():
            out[key] = (_vary_branch(self.cfg, self.name, variation, events, file_index, entry),
                        weight)
        return out

    def read(self, step_size: int, progress=None) -> dict:
        """All events at once: ``{set: (events, weight)}``."""
        events = io.read_branches(self.files, self.tree, self.branches, step_size, progress)
        file_index = np.repeat(np.arange(len(self.files)), self.entries)
        entry = np.concatenate([np.arange(e) for e in self.entries])
        return self.sets(events, file_index, entry)

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


def _read_sample(reader: SampleReader, step_size: int, bar) -> dict[str, SampleEvents]:
    """Read one sample into memory, with the events of each variation computed from it."""
    sets = {key: EventSet(ev, w, reader.plan)
            for key, (ev, w) in reader.read(step_size, bar.update).items()}
    return {name: SampleEvents(name, reader.files, sets[key], reader.norm, variant)
            for name, key, variant in reader.members}


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


def _vary_branch(cfg: AnalysisConfig, sample: str, name: str, events, file_index, entry):
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


def _block(n_chunk: int) -> int:
    """Events per histogram block of a chunk: each block holds events of one or a few event
    sets, each event a slot among them (see ``Analysis._prepare_chunks``)."""
    return KDE_BLOCK if n_chunk % KDE_BLOCK == 0 else n_chunk


def _padded_groups(groups: np.ndarray, n_chunk: int, n_sets: int) -> np.ndarray:
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


class Analysis:
    """An analysis configuration bound to its events, ready to evaluate and differentiate.

    Args:
        cfg: the validated configuration.
        base_dir: directory that relative file paths in ``cfg`` are relative to.
        engine: ``compiled`` (flat buffers, one ``jax.jit``) or ``awkward`` (JAX-backed
            Awkward arrays, eager); defaults to ``cfg.engine``.
        progress: show progress bars while reading.
        layout: the chunk shape found elsewhere (a Dask worker's analysis: it holds no events
            and lowers the chunks it is given); ``{}`` before it is known.
    """

    def __init__(self, cfg: AnalysisConfig, base_dir: str | Path = ".", engine: str | None = None,
                 progress: bool = True, layout: dict | None = None):
        self.cfg = cfg
        self.engine = engine or cfg.engine
        self.plan = ragged.plan(cfg)
        self.param_names = list(cfg.parameters)
        self.trainable = [n for n, p in cfg.parameters.items() if p.trainable]
        lo = np.array([cfg.parameters[n].bounds[0] for n in self.trainable], dtype=np.float64)
        hi = np.array([cfg.parameters[n].bounds[1] for n in self.trainable], dtype=np.float64)
        self.lower_bounds, self.upper_bounds = lo, hi

        self.device = compute_device(cfg.device)
        base = Path(base_dir)
        generated = None
        if cfg.generate is not None:
            g = cfg.generate
            generated = ensure_generated(g.kind, g.events, g.seed,
                                         progress=(lambda m: tqdm.write(m)) if progress else None)
        self._readers = [SampleReader(cfg, name, self.plan, base, generated) for name in cfg.samples]
        total = sum(sum(r.entries) for r in self._readers)
        self.samples: dict[str, SampleEvents] = {}
        distributed = cfg.executor.kind == "dask"
        held = not (cfg.streaming or distributed or layout is not None)
        if not held:  # the events stay in the files (or on the workers)
            for r in self._readers:
                sets = {key: StreamedSet(r, key) for _, key, _ in r.members}
                self.samples.update({name: SampleEvents(name, r.files, sets[key], r.norm, variant)
                                     for name, key, variant in r.members})
        else:
            with tqdm(total=total, desc="reading events", unit="ev", disable=not progress,
                      leave=False) as bar:
                for r in self._readers:
                    self.samples.update(_read_sample(r, cfg.step_size, bar))
        self._edges = {r: jnp.asarray(reg.binning.edges) for r, reg in cfg.regions.items()}
        self._groups = self._group_samples()
        self._remote = None
        if not held:
            self._set_index = {(ev.reader.name, ev.key): g
                               for g in self._groups for ev in [self._group_events(g)]}
        if layout is not None:
            if layout:
                self._apply_layout(layout)
        elif distributed:
            from diffana.distributed import DaskChunks

            self._remote = DaskChunks(self, base, progress)
        elif cfg.streaming:
            self._prepare_stream(total, progress)
        elif self.engine == "compiled":
            self._prepare_chunks(progress)
        else:
            ragged.enable_awkward_jax()
        self.model = Model(specmod.to_json(specmod.build(cfg, self._placeholder_yields())),
                           poi_name=cfg.model.poi)
        self._objective_from_yields = jax.jit(self.objective_from_yields)
        self._dobjective_dyields = jax.jit(jax.grad(self.objective_from_yields))
        self._loss_of_yields = jax.jit(jax.value_and_grad(self._loss_from_yields))

    # --- parameters -------------------------------------------------------------------------

    def initial_params(self) -> dict:
        """All parameters at their configured values, as float64 JAX scalars."""
        return {n: jnp.asarray(p.value, dtype=jnp.float64) for n, p in self.cfg.parameters.items()}

    def to_unit(self, params: dict) -> jax.Array:
        """Trainable parameters mapped to the unit box: ``u = (θ - lo) / (hi - lo)``."""
        theta = jnp.stack([jnp.asarray(params[n], dtype=jnp.float64) for n in self.trainable])
        return (theta - self.lower_bounds) / (self.upper_bounds - self.lower_bounds)

    def from_unit(self, u, fixed: dict | None = None) -> dict:
        """All parameters, the trainable ones from unit-box coordinates ``u``."""
        params = dict(fixed or self.initial_params())
        theta = self.lower_bounds + (self.upper_bounds - self.lower_bounds) * u
        for i, n in enumerate(self.trainable):
            params[n] = theta[i]
        return params

    # --- select and observe -----------------------------------------------------------------

    def _group_samples(self) -> dict[int, dict[str, tuple | None]]:
        """Samples grouped by the events they share: ``{group: {sample: variant}}``."""
        groups: dict[int, dict] = {}
        for n, s in self.samples.items():
            groups.setdefault(id(s.events), {})[n] = s.variant
        return dict(enumerate(groups.values()))

    def _group_events(self, group: int) -> EventSet:
        return self.samples[next(iter(self._groups[group]))].events

    @cached_property
    def _variants(self) -> list:
        """Every per-event weight factor in use; index 0 is the events as they are."""
        out = [None]
        for members in self._groups.values():
            out += [v for v in members.values()
                    if v is not None and v[0] == "reweight" and v not in out]
        return out

    def _variant_index(self, variant) -> tuple[int, float]:
        """``(m, factor)``: a sample's weights are ``factor × W[m]``."""
        if variant is not None and variant[0] == "weight":
            return 0, variant[1]
        return self._variants.index(variant), 1.0

    def _region_events(self, ops, params: dict, weight, hard: bool) -> dict:
        """Select and observe once for one set of events.

        Returns ``{region: (x, W)}``: the observable per event and the event weights of
        every variant (``W[m]`` for ``self._variants[m]``), normalisation included.
        """
        cfg = self.cfg
        weights = select.object_weights(cfg, self.plan, ops, params, hard)
        obs = observe.evaluate(cfg, self.plan, ops, weights)
        common = select.event_weights(cfg, self.plan, ops, cfg.selection, weights, obs, params, hard)
        factors = jnp.stack([jnp.ones_like(weight) if v is None else 1.0 + v[2] * obs[v[1]]
                             for v in self._variants])
        return {rname: (obs[region.observable],
                        factors * (common * weight * select.event_weights(
                            cfg, self.plan, ops, region.selection, weights, obs, params, hard)))
                for rname, region in cfg.regions.items()}

    def _kde(self, events: dict, slots=None, num_slots: int = 1, block: int | None = None) -> dict:
        """``{region: (yields, sumw2)}`` of ``_region_events``, each ``(variants, bins)``, or
        ``(blocks, slots, variants, bins)`` given each event's slot in its block."""
        return {r: kde_histogram(x, w, self._edges[r], self.cfg.regions[r].bandwidth,
                                 slots, num_slots, block)
                for r, (x, w) in events.items()}

    def _by_sample(self, stacked: dict, floor: bool = True) -> dict:
        """``{region: (yields, sumw2)}``, each ``(groups, variants, bins, ...)``, →
        ``[region][sample] = {"nominal", "sumw2"}``.

        ``floor``: add each region's per-bin floor to the nominal yields.
        """
        out: dict = {r: {} for r in self.cfg.regions}
        for g, members in self._groups.items():
            for sample, variant in members.items():
                m, k = self._variant_index(variant)
                for r, (y, w2) in stacked.items():
                    f = self.cfg.regions[r].floor if floor else 0.0
                    out[r][sample] = {"nominal": k * y[g, m] + f, "sumw2": k * k * w2[g, m]}
        return out

    # --- the compiled engine: fixed-size chunks, one compiled function for all -------------

    def _prepare_chunks(self, progress: bool) -> None:
        """Lay the event sets end to end, lower them in chunks and pad those to one shape.

        Every sample and variation goes through the same compiled chunk function, which
        sorts its yields by event set: a chunk may hold the end of one set and the start of
        the next (so small sets cost no padding). Each event has a slot among the chunk's
        sets (``__slot__``) and ``slots`` maps a slot to its set.
        """
        sets = [self._group_events(g) for g in self._groups]
        events = ak.concatenate([s.events for s in sets]) if len(sets) > 1 else sets[0].events
        weight = np.concatenate([s.weight for s in sets])
        groups = np.repeat(np.arange(len(sets), dtype=np.int32), [len(s) for s in sets])
        self._group_slices = np.cumsum([0] + [len(s) for s in sets])
        # chunks of equal size, at most chunk_size events, a multiple of the block size
        n_chunks = max(-(-len(weight) // self.cfg.chunk_size), 1)
        per_chunk = -(-len(weight) // n_chunks)
        size = min(-(-per_chunk // 512) * 512, self.cfg.chunk_size) if len(weight) else 1
        raw = []
        starts = range(0, max(len(weight), 1), size)
        for a in tqdm(starts, desc="lowering", unit="chunk", disable=not progress, leave=False):
            raw.append(ragged.lower(events[a:a + size], self.plan, weight[a:a + size]).buffers)
        del events  # the sets laid end to end: a copy, where there are several
        layout = self._capacity_of([ragged.axis_sizes(b, self.plan) for b in raw], size)
        n_chunk = layout["capacity"]["event"]
        padded = [_padded_groups(groups[a:a + size], n_chunk, len(sets)) for a in starts]
        # the most sets (padding included) that one histogram block holds
        slots = max(len(np.unique(b)) for g in padded for b in g.reshape(-1, _block(n_chunk)))
        self._apply_layout({**layout, "slots": slots})

        def device_chunks():  # each lowered chunk let go once it is on the device
            for i, g in enumerate(padded):
                buffers, raw[i] = raw[i], None
                yield self._device_chunk(buffers, g)

        self._chunks = HeldChunks(device_chunks(), len(raw))

    def _prepare_stream(self, total: int, progress: bool) -> None:
        """``streaming: true``: a first pass over the files counts the events of each set and
        finds the chunk shape; every evaluation then reads and lowers the chunks again."""
        sizes = []
        with tqdm(total=total, desc="first pass", unit="ev", disable=not progress,
                  leave=False) as bar:
            for _, buffers in self._stream_lowered(first_pass=True, progress=bar.update):
                sizes.append(ragged.axis_sizes(buffers, self.plan))
        self._apply_layout(self.chunk_layout(sizes))

    def chunk_layout(self, sizes: list[dict]) -> dict:
        """The padded shape of chunks of one set each (streamed or distributed) from their
        axis sizes: each axis's largest size, rounded up."""
        if not sizes:
            raise DataError(f"{self.cfg.name}: no events left to analyse (after preselection)")
        # a block holds events of its chunk's one set, and padding: two slots
        return {**self._capacity_of(sizes, -(-self.cfg.chunk_size // 512) * 512), "slots": 2}

    def _stream_lowered(self, first_pass: bool = False, progress=None):
        """``(set, lowered buffers)`` of each chunk read from the files (the first pass
        counts the events of each set)."""
        for reader in self._readers:
            for n_read, sets in reader.chunks(self.cfg.chunk_size):
                for g, buffers in self._lower_sets(reader, sets):
                    if first_pass:
                        self._group_events(g).n_events += len(buffers["weight"])
                    yield g, buffers
                if progress is not None:
                    progress(n_read)

    def _lower_sets(self, reader: SampleReader, sets: dict) -> list:
        return [(self._set_index[(reader.name, key)], ragged.lower(events, self.plan, weight).buffers)
                for key, (events, weight) in sets.items() if len(weight)]

    def range_specs(self) -> list[tuple[int, int, int, int]]:
        """``(sample reader, file, first entry, stop entry)`` of each chunk to read."""
        size = self.cfg.chunk_size
        return [(i, f, a, min(a + size, n)) for i, r in enumerate(self._readers)
                for f, n in enumerate(r.entries) for a in range(0, n, size)]

    def lower_range(self, spec: tuple[int, int, int, int]) -> list:
        """``[(set, lowered buffers)]`` of one range of one file (see :meth:`range_specs`)."""
        r, f, start, stop = spec
        reader = self._readers[r]
        events = io.read_range(reader.files[f], reader.tree, reader.branches, start, stop)
        n = len(events)
        return self._lower_sets(reader, reader.sets(events, np.full(n, f), start + np.arange(n)))

    def device_chunk(self, g: int, buffers: dict) -> tuple[int, int, dict]:
        """``(set, events, padded device chunk)`` of a lowered chunk of one set."""
        n = len(buffers["weight"])
        groups = _padded_groups(np.full(n, g, np.int32), self._chunk_events, len(self._groups))
        return g, n, self._device_chunk(buffers, groups)

    def _streamed_chunks(self):
        """``(set, events, device chunk)`` of each chunk, read and lowered while the previous
        chunk is computed (one chunk ahead, in a thread: uproot, Awkward and XLA release the GIL)."""
        lowered = self._stream_lowered()

        def produce():
            item = next(lowered, None)
            return None if item is None else self.device_chunk(*item)

        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(produce)
            while (item := ahead.result()) is not None:
                ahead = pool.submit(produce)
                yield item

    def _chunks_now(self):
        """The device chunks: held in memory, or read from the files (streaming)."""
        if self.cfg.streaming:
            return (chunk for _, _, chunk in self._streamed_chunks())
        return iter(self._chunks)

    @staticmethod
    def _capacity_of(sizes: list[dict], size: int) -> dict:
        """Each axis's largest size over the chunks, rounded up (``capacity``), and the most
        objects of one event on each scanned axis (``runs``)."""
        capacity: dict = {}
        for chunk in sizes:
            for axis, n in chunk.items():
                capacity[axis] = max(capacity.get(axis, 1), n)
        runs = {axis: n for axis, n in capacity.items() if axis[0] == "run"}
        # round up so that similar inputs share shapes (and compiled code) across runs
        capacity = {axis: -(-n // 512) * 512 for axis, n in capacity.items() if axis[0] != "run"}
        capacity["event"] = min(capacity["event"], size)
        return {"capacity": capacity, "runs": runs}

    def _apply_layout(self, layout: dict) -> None:
        """Fix the padded chunk shape (and compile for it)."""
        self.layout = layout
        self._capacity, self._runs = layout["capacity"], layout["runs"]
        self._num_slots = layout["slots"]
        self._chunk_events = self._capacity["event"]
        self._block = _block(self._chunk_events)
        self._make_compiled()

    def _device_chunk(self, buffers: dict, groups: np.ndarray) -> dict:
        """A lowered chunk padded to the chunk shape, with its events' slots, on the device."""
        for axis, n in ragged.axis_sizes(buffers, self.plan).items():
            limit = self._runs if axis[0] == "run" else self._capacity
            if n > limit[axis]:
                raise DataError(f"{self.cfg.name}: a chunk has {n} entries on {axis}, more than "
                                f"the {limit[axis]} of the first pass (did the files change?)")
        padded = ragged.pad(buffers, self.plan, self._capacity)
        blocks = [np.unique(b, return_inverse=True) for b in groups.reshape(-1, self._block)]
        padded["events"]["__slot__"] = np.concatenate([slot for _, slot in blocks]).astype(np.int32)
        # unused slots (and the padding events' set) are dropped
        padded["slots"] = np.array([np.concatenate([present, np.full(
            self._num_slots - len(present), len(self._groups))]) for present, _ in blocks], np.int32)
        return ragged.to_device(padded, self.device)

    def _make_compiled(self) -> None:
        self._jit_events = jax.jit(self._chunk_region_events, static_argnums=2)
        self._jit_yields = jax.jit(self._chunk_yields)
        self._jit_jacobian = jax.jit(self._chunk_jacobian)
        self._jit_vjp = jax.jit(self._chunk_vjp)
        self._jit_fused = jax.jit(jax.value_and_grad(self._fused_loss))
        self._jit_loss_and_cotangent = jax.jit(jax.value_and_grad(
            lambda stacked: self._loss_from_yields(self._by_sample(stacked))))
        self._jit_contract = jax.jit(lambda ct, jac: sum(
            jnp.tensordot(c, j, axes=c.ndim) for c, j in
            zip(jax.tree_util.tree_leaves(ct), jax.tree_util.tree_leaves(jac), strict=True)))

    def _chunk_region_events(self, params: dict, chunk: dict, hard: bool) -> dict:
        ops = ragged.CompiledOps(chunk, self._chunk_events, self._runs)
        return self._region_events(ops, params, chunk["weight"], hard)

    def _chunk_yields(self, params: dict, chunk: dict) -> dict:
        """``{region: (yields, sumw2)}`` of one chunk, each ``(sets, variants, bins)``."""
        local = self._kde(self._chunk_region_events(params, chunk, False),
                          chunk["events"]["__slot__"], self._num_slots, self._block)
        n_sets, slots = len(self._groups), chunk["slots"].reshape(-1)
        return jax.tree_util.tree_map(
            lambda a: jnp.zeros((n_sets, *a.shape[2:]), a.dtype).at[slots].add(
                a.reshape(-1, *a.shape[2:]), mode="drop"), local)

    def _chunk_yields_at(self, u, params_fixed, chunk) -> dict:
        """:meth:`_chunk_yields` at unit-box coordinates ``u``."""
        return self._chunk_yields(self.from_unit(u, params_fixed), chunk)

    def _chunk_jacobian(self, u, params_fixed, chunk):
        """Yields of one chunk and their Jacobian in ``u`` (forward mode: one tangent each)."""
        def yields(v):
            y = self._chunk_yields_at(v, params_fixed, chunk)
            return y, y

        jac, y = jax.jacfwd(yields, has_aux=True)(u)
        return y, jac

    def _chunk_vjp(self, u, params_fixed, cotangent, chunk):
        _, pullback = jax.vjp(lambda v: self._chunk_yields_at(v, params_fixed, chunk), u)
        return pullback(cotangent)[0]

    def _over_chunks(self, name: str, *args):
        """``_jit_<name>(*args, chunk)`` (``yields``, ``jacobian``, ``vjp``) summed over the
        chunks: here, or on the workers that hold them."""
        if self._remote is not None:
            return self._remote.map_reduce(name, args)
        return self.sum_over(name, args, self._chunks_now())

    def sum_over(self, name: str, args: tuple, chunks) -> dict:
        """``_jit_<name>(*args, chunk)`` summed over these device chunks."""
        fn = getattr(self, f"_jit_{name}")
        total = None
        for chunk in chunks:
            r = fn(*args, chunk)
            total = r if total is None else jax.tree_util.tree_map(jnp.add, total, r)
        return total

    def _gradient_mode(self) -> str:
        mode = self.cfg.gradient
        if mode != "auto":
            return mode
        if self.engine != "compiled":
            return "reverse"
        if self.cfg.streaming or self._remote is not None:
            # forward for few parameters, two passes (yields, VJP) for many
            return "forward" if len(self.trainable) <= STREAM_FORWARD_MAX else "reverse"
        return "fused"

    def _fused_loss(self, u, params_fixed, stacked):
        """The loss as one function: a ``lax.scan`` over the chunks, then model and inference.

        One compiled function per gradient step (the chunk body compiled once). The chunk
        body is rematerialised (``jax.checkpoint``): the backward pass recomputes each
        chunk's intermediate values (events × bins of the KDE, per-object weights) from the
        chunk instead of keeping every chunk's until the end, so no more than one chunk's
        are held at once. On the reference configuration at 1 M events this costs no time
        (0.53 s per step either way: less memory traffic pays for the recomputation) and
        takes the step's own memory from ~770 MB to ~220 MB.
        """
        params = self.from_unit(u, params_fixed)

        def body(total, chunk):
            return jax.tree_util.tree_map(jnp.add, total, self._chunk_yields(params, chunk)), None

        body = jax.checkpoint(body, prevent_cse=False)  # prevent_cse only slows a scan body

        first = jax.tree_util.tree_map(lambda a: a[0], stacked)
        zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                       jax.eval_shape(self._chunk_yields, params, first))
        total, _ = jax.lax.scan(body, zeros, stacked)
        return self._loss_from_yields(self._by_sample(total))

    # --- select, observe, histogram ---------------------------------------------------------

    def _event_parts(self, params: dict, hard: bool):
        """``(group, {region: (x, W)})`` for all events, in parts: whole event sets, or
        chunks when streaming (see :meth:`_region_events`)."""
        if self._remote is not None:
            raise DiffanaError("the events of each sample are on the Dask workers; per-event "
                               "values need executor: local")
        if self.cfg.streaming:
            yield from self.chunk_parts(self._streamed_chunks(), params, hard)
        elif self.engine == "compiled":
            parts = [self._jit_events(params, chunk, hard) for chunk in self._chunks]
            stream = {r: tuple(jnp.concatenate([c[r][i] for c in parts], axis=-1) for i in (0, 1))
                      for r in self.cfg.regions}
            for g in self._groups:
                a, b = self._group_slices[g], self._group_slices[g + 1]
                yield g, {r: (x[a:b], w[:, a:b]) for r, (x, w) in stream.items()}
        else:
            # Fresh JAX-backed Awkward arrays per evaluation: arrays reused across nested
            # transforms (jacrev after a vjp) were seen to give wrong cotangents.
            for g in self._groups:
                lowered = self._group_events(g).lowered
                yield g, self._region_events(ragged.AwkwardOps(lowered), params,
                                             jnp.asarray(lowered.weight), hard)

    def chunk_parts(self, chunks, params: dict, hard: bool):
        """``(group, {region: (x, W)})`` of each ``(set, events, device chunk)``."""
        for g, n, chunk in chunks:
            yield g, {r: (x[:n], w[:, :n]) for r, (x, w)
                      in self._jit_events(params, chunk, hard).items()}

    def _samples_of(self, g: int, events: dict):
        """``(sample, {region: (x, w)})`` of each sample of group ``g``."""
        for sample, variant in self._groups[g].items():
            m, k = self._variant_index(variant)
            yield sample, {r: (x, k * w[m]) for r, (x, w) in events.items()}

    def region_events(self, params: dict, hard: bool = False) -> dict:
        """Per sample and region: ``(observable, event weight)`` per event.

        The event weight is normalisation × soft selection (hard: 0/1 selection). When
        streaming, this holds every event's values in memory at once.
        """
        parts: dict = {}
        for g, events in self._event_parts(params, hard):
            for sample, regions in self._samples_of(g, events):
                for r, xw in regions.items():
                    parts.setdefault(sample, {}).setdefault(r, []).append(xw)
        return {s: {r: tuple(jnp.concatenate(c) for c in zip(*xw, strict=True))
                    for r, xw in regions.items()} for s, regions in parts.items()}

    def yields(self, params: dict) -> dict:
        """KDE yields ``[region][sample] = {"nominal", "sumw2"}``: differentiable in ``params``."""
        if self.engine == "compiled":
            return self._by_sample(self._over_chunks("yields", params))
        per_group = []
        for g in self._groups:
            lowered = self._group_events(g).lowered
            per_group.append(self._kde(self._region_events(
                ragged.AwkwardOps(lowered), params, jnp.asarray(lowered.weight), False)))
        return self._by_sample(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_group))

    def yields_and_jacobian(self, params: dict) -> tuple[dict, dict]:
        """Yields and ``∂yields/∂θ`` of the trainable parameters (``[region][sample][key][θ]``)."""
        theta = {n: params[n] for n in self.trainable}
        if self.engine != "compiled":
            y = self.yields(params)
            return y, jax.jacfwd(lambda th: self.yields({**params, **th}))(theta)
        y, jac = self._over_chunks("jacobian", self.to_unit(params), params)
        scale = jnp.asarray(self.upper_bounds - self.lower_bounds)
        jac = self._by_sample(jac, floor=False)
        out = {r: {s: {k: {n: jac[r][s][k][..., i] / scale[i] for i, n in enumerate(self.trainable)}
                       for k in ("nominal", "sumw2")} for s in jac[r]} for r in jac}
        return self._by_sample(y), out

    def hard_histograms(self, params: dict) -> dict:
        """Hard cuts filled into ``hist.Hist`` histograms ``[region][sample]``."""
        if self._remote is not None:
            return self._remote.hard_histograms(params)
        return self.fill_hard(self._event_parts(params, hard=True))

    def fill_hard(self, parts) -> dict:
        """``[region][sample]`` histograms of ``(group, {region: (x, W)})`` parts."""
        hists = {r: {s: empty_histogram(reg.binning.edges, label=reg.observable)
                     for s in self.samples} for r, reg in self.cfg.regions.items()}
        for g, events in parts:
            for sample, regions in self._samples_of(g, events):
                for r, (x, w) in regions.items():
                    hists[r][sample].fill(x=np.asarray(x), weight=np.asarray(w))
        return hists

    def pseudodata(self, hists: dict) -> dict | None:
        """``{region: hist.Hist}``: the configured pseudodata from hard histograms, if any."""
        mix = self.cfg.model.pseudodata
        if not mix:
            return None
        return {r: sum((hs[s] * float(f) for s, f in mix.items()), start=hs[next(iter(mix))] * 0.0)
                for r, hs in hists.items()}

    def close(self) -> None:
        """Let go of the Dask cluster or client, if any."""
        if self._remote is not None:
            self._remote.close()

    def hard_yields(self, params: dict, hists: dict | None = None) -> dict:
        """Yields of the hard histograms (``hists``, if already filled at ``params``), with
        the same floor as the soft ones."""
        hists = hists or self.hard_histograms(params)
        return {r: {s: {"nominal": jnp.asarray(h.values()) + self.cfg.regions[r].floor,
                        "sumw2": jnp.asarray(h.variances())}
                    for s, h in hs.items()} for r, hs in hists.items()}

    def _placeholder_yields(self) -> dict:
        return {r: {s: {"nominal": np.ones(len(reg.binning.edges) - 1),
                        "sumw2": np.ones(len(reg.binning.edges) - 1)} for s in self.samples}
                for r, reg in self.cfg.regions.items()}

    # --- model and infer --------------------------------------------------------------------

    def spec(self, yields: dict) -> dict:
        """The pyhf spec of these yields (leaves may be traced JAX arrays)."""
        return specmod.build(self.cfg, yields)

    def workspace(self, yields: dict, observations: dict | None = None) -> dict:
        """The pyhf workspace JSON (plain floats) of these yields (observations: Asimov)."""
        return specmod.to_json(specmod.build(self.cfg, yields, observations))

    def objective_from_yields(self, yields: dict):
        """The configured figure of merit of these yields."""
        obj = self.cfg.objective
        if obj.kind == "asimov_significance":
            sig = self.cfg.model.signal
            bkg = [s for s in self.cfg.nominal_samples if s not in sig]
            s = jnp.concatenate([sum(yields[r][x]["nominal"] for x in sig) for r in self.cfg.regions])
            b = jnp.concatenate([sum(yields[r][x]["nominal"] for x in bkg) for r in self.cfg.regions])
            return infer.asimov_significance_closed_form(s, b, obj.relative_background_uncertainty)
        templates = self.model.templates(self.spec(yields))
        if obj.kind == "discovery_significance":
            return infer.discovery_significance(self.model, templates)
        if obj.kind == "expected_cls":
            return infer.expected_cls(self.model, templates, obj.poi_value)
        return infer.poi_uncertainty(self.model, templates)

    def _loss_from_yields(self, yields: dict):
        """What the optimiser minimises: the objective, negated when it is maximised."""
        value = self.objective_from_yields(yields)
        return -value if self.maximise else value

    @property
    def maximise(self) -> bool:
        """Whether a larger objective is better (significances) or worse (CLs, uncertainties)."""
        return self.cfg.objective.kind in MAXIMISED

    def objective(self, params: dict):
        """Soft objective at ``params`` (differentiable: ``jax.grad(ana.objective)(params)``)."""
        if self.engine == "compiled":
            return self._objective_from_yields(self.yields(params))
        # JAX-backed Awkward outputs under a transform cannot enter a jit-compiled function.
        return self.objective_from_yields(self.yields(params))

    def hard_objective(self, params: dict, hists: dict | None = None) -> float:
        """The objective with hard cuts and hard histograms: the honest evaluation."""
        return float(self._objective_from_yields(self.hard_yields(params, hists)))

    # --- what the optimiser calls -----------------------------------------------------------

    def loss_and_grad(self, u, params_fixed: dict | None = None):
        """Loss (``-objective`` when maximised) and its gradient in unit-box coordinates.

        The ragged stages run chunk by chunk and are chained to the compiled model and
        inference stages: ``∂loss/∂u = Σ_chunks ∂loss/∂yields · ∂yields_chunk/∂u``.
        """
        params_fixed = params_fixed or self.initial_params()
        if self.engine == "compiled":
            mode = self._gradient_mode()
            if mode == "fused":
                return self._jit_fused(u, params_fixed, self._chunks.stacked)
            if mode == "reverse":
                y = self._over_chunks("yields", self.from_unit(u, params_fixed))
                loss, ct = self._jit_loss_and_cotangent(y)
                return loss, self._over_chunks("vjp", u, params_fixed, ct)
            y, jac = self._over_chunks("jacobian", u, params_fixed)
            loss, ct = self._jit_loss_and_cotangent(y)
            return loss, self._jit_contract(ct, jac)
        # Awkward cannot be jit-compiled: differentiate the ragged stages eagerly and chain
        # them with the jit-compiled model and inference stages (∂loss/∂u = ∂loss/∂y · ∂y/∂u).
        y, pullback = jax.vjp(lambda v: self.yields(self.from_unit(v, params_fixed)), u)
        loss, dloss_dy = self._loss_of_yields(y)
        return loss, pullback(dloss_dy)[0]

    def sensitivity(self, params: dict, yields_and_jacobian: tuple | None = None) -> dict:
        """∂objective/∂θ split into the contribution of each region × sample's yields.

        Returns ``{param: {"region/sample": d}}`` with ``Σ d = ∂objective/∂param`` (the chain
        rule ``∂objective/∂yields · ∂yields/∂θ`` summed over bins, nominal and Σw² together).
        ``yields_and_jacobian``: what :meth:`yields_and_jacobian` gave at ``params``, if at hand.
        """
        y, dy_dtheta = yields_and_jacobian or self.yields_and_jacobian(params)
        dobj_dy = self._dobjective_dyields(y)
        out: dict = {n: {} for n in self.trainable}
        for r in self.cfg.regions:
            for s in self.samples:
                for n in self.trainable:
                    d = sum(float(jnp.sum(dobj_dy[r][s][k] * dy_dtheta[r][s][k][n]))
                            for k in ("nominal", "sumw2"))
                    out[n][f"{r}/{s}"] = d
        return out
