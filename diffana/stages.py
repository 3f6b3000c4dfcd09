"""The stages from parameters to yields: select, observe, histogram — pure functions.

::

    params θ, events (ops) ──select──► object and event weights ──observe──► per-event x
        ──region selection──► {region: (x, W)} ──KDE──► yields per set × variant × bin

Everything a stage needs besides ``(params, chunk)`` is in a :class:`Kernel`: the
configuration, the :class:`~diffana.plan.Plan`, the parameter space, the event sets and
their variants, the bin edges and the chunk layout. A kernel is frozen and hashable by
identity, so the compiled stage functions take it as a static argument:

    >>> jit_yields(kernel, params, chunk)                            # doctest: +SKIP

``chunk_yields``, ``chunk_jacobian`` and ``chunk_vjp`` are what executors map over chunks
and sum (yields are sums over events).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from diffana import classifier, observe, ragged, select, split
from diffana.chunks import ChunkLayout
from diffana.config import AnalysisConfig
from diffana.exported import persistent
from diffana.histogram import empty_histogram, hard_histogram, kde_histogram, trainable_edges
from diffana.plan import ParameterSpace, Plan, Reweight, Scaled, Variant
from diffana.soft import reverse_mode


@dataclass(frozen=True, eq=False)
class Kernel:
    """What the stage functions hold fixed: a static argument of the compiled ones.

    ``groups[g]`` maps each sample of event set ``g`` to its :data:`~diffana.plan.Variant`;
    ``variants`` lists every per-event weight factor in use (index 0: the events as they
    are); ``layout`` is the chunk shape (``None`` until known, and for the awkward engine);
    ``part``: the events the stages weigh where the configuration has a ``split``
    (``train``, ``test`` or ``all``: :mod:`diffana.split`; without one, every part is all).
    """

    cfg: AnalysisConfig
    plan: Plan
    space: ParameterSpace
    groups: tuple[dict[str, Variant], ...]
    variants: tuple[Variant, ...]
    edges: dict
    layout: ChunkLayout | None = None
    part: str = "train"

    @classmethod
    def of(cls, cfg: AnalysisConfig, plan: Plan, space: ParameterSpace,
           groups: list[dict[str, Variant]]) -> Kernel:
        variants: list = [None]
        for members in groups:
            variants += [v for v in members.values()
                         if isinstance(v, Reweight) and v not in variants]
        edges = {r: jnp.asarray(reg.binning.edges) for r, reg in cfg.regions.items()}
        return cls(cfg, plan, space, tuple(groups), tuple(variants), edges)

    def with_layout(self, layout: ChunkLayout) -> Kernel:
        return dataclasses.replace(self, layout=layout)

    def for_part(self, part: str) -> Kernel:
        """This kernel weighing the events of ``part`` (one kernel per part: compiled once)."""
        return self if part == self.part else _kernel_for_part(self, part)

    @property
    def samples(self) -> list[str]:
        """Every sample (nominal and variation), set by set."""
        return [s for members in self.groups for s in members]

    def variant_index(self, variant: Variant) -> tuple[int, float]:
        """``(m, factor)``: a sample's weights are ``factor × W[m]``."""
        if isinstance(variant, Scaled):
            return 0, variant.factor
        return self.variants.index(variant), 1.0


@functools.lru_cache(maxsize=64)
def _kernel_for_part(kernel: Kernel, part: str) -> Kernel:
    if part not in split.PARTS:
        raise ValueError(f"part {part!r}: expected one of {', '.join(split.PARTS)}")
    return dataclasses.replace(kernel, part=part)


#: The key of the classifier's sums (:mod:`diffana.classifier`) beside the regions' yields
#: in a chunk's sums, with a ``binary_cross_entropy`` objective.
CLASSIFIER = "__classifier__"


def region_events(kernel: Kernel, ops, params: dict, weight, hard: bool) -> dict:
    """Select and observe once for one set of events.

    Returns ``{region: (x, W)}``: the observable per event and the event weights of every
    variant (``W[m]`` for ``kernel.variants[m]``), normalisation included (and the factor of
    the kernel's part of the events, where the configuration has a ``split``).
    """
    return stage_events(kernel, ops, params, weight, hard)[0]


def stage_events(kernel: Kernel, ops, params: dict, weight, hard: bool) -> tuple:
    """``(regions, scores)``: :func:`region_events`, and with a ``binary_cross_entropy``
    objective the classifier's ``(score, w)`` per event (``w``: the nominal event weights
    after the top-level selection, or the objective's region's), else None."""
    cfg, plan = kernel.cfg, kernel.plan
    weight = split.part_weight(cfg.split, kernel.part, ops, weight)
    weights = select.object_weights(cfg, plan, ops, params, hard)
    obs = observe.evaluate(cfg, plan, ops, weights, params)
    common = select.event_weights(cfg, plan, ops, cfg.selection, weights, obs, params, hard)
    factors = jnp.stack([jnp.ones_like(weight) if v is None else 1.0 + v.slope * obs[v.observable]
                         for v in kernel.variants])
    regions = {rname: (obs[region.observable],
                       factors * (common * weight * select.event_weights(
                           cfg, plan, ops, region.selection, weights, obs, params, hard)))
               for rname, region in cfg.regions.items()}
    objective = cfg.objective
    if objective.kind != "binary_cross_entropy":
        return regions, None
    w = common * weight
    if objective.region is not None:
        w = w * select.event_weights(cfg, plan, ops, cfg.regions[objective.region].selection,
                                     weights, obs, params, hard)
    return regions, (obs[objective.observable], w)


def input_moments(kernel: Kernel, ops, params: dict, weight) -> dict:
    """``{group: (Σw, Σw·x, Σw·x²)}`` of each parameter group's input observables (shape
    ``(3, inputs)``), ``w`` the event weights after the top-level soft selection (of the
    kernel's part of the events): what a network's input standardisation is taken from.
    """
    cfg, plan = kernel.cfg, kernel.plan
    weight = split.part_weight(cfg.split, kernel.part, ops, weight)
    weights = select.object_weights(cfg, plan, ops, params, False)
    obs = observe.evaluate(cfg, plan, ops, weights, params)
    w = weight * select.event_weights(cfg, plan, ops, cfg.selection, weights, obs, params, False)
    out = {}
    for name in kernel.space.networks:
        spec = cfg.observables[name]
        x = jnp.stack([jnp.asarray(obs[i], dtype=jnp.float64)
                       for i in observe.KINDS[spec.kind].reads(spec)])
        out[name] = jnp.stack([jnp.broadcast_to(jnp.sum(w), x.shape[:1]), x @ w, (x * x) @ w])
    return out


def kde(kernel: Kernel, events: dict, slots=None, num_slots: int = 1,
        block: int | None = None, params: dict | None = None) -> dict:
    """``{region: (yields, sumw2)}`` of :func:`region_events`, each ``(variants, bins)``, or
    ``(blocks, slots, variants, bins)`` given each event's slot in its block.

    A region's ``bandwidth`` that names a parameter is ``params[name]``, and trainable bin
    edges are ``params`` too (:func:`region_edges`): both differentiable.
    """
    def bandwidth(r):
        h = kernel.cfg.regions[r].bandwidth
        return params[h] if isinstance(h, str) else h

    return {r: kde_histogram(x, w, region_edges(kernel, r, params), bandwidth(r), slots,
                             num_slots, block)
            for r, (x, w) in events.items()}


def region_edges(kernel: Kernel, region: str, params: dict | None):
    """A region's bin edges: the configured ones, or where its binning is trainable, those
    of its parameter group in ``params`` (:func:`diffana.histogram.trainable_edges`)."""
    group = kernel.space.binnings.get(region)
    if group is None:
        return kernel.edges[region]
    edges = kernel.cfg.regions[region].binning.edges
    return trainable_edges(params[group]["weights"], edges[0], edges[-1])


def by_sample(kernel: Kernel, stacked: dict, floor: bool = True) -> dict:
    """``{region: (yields, sumw2)}``, each ``(sets, variants, bins, ...)``, →
    ``[region][sample] = {"nominal", "sumw2"}`` (the classifier's sums left out:
    :func:`classifier_by_sample`).

    ``floor``: add each region's per-bin floor to the nominal yields.
    """
    out: dict = {r: {} for r in kernel.cfg.regions}
    for g, members in enumerate(kernel.groups):
        for sample, variant in members.items():
            m, k = kernel.variant_index(variant)
            for r, sums in stacked.items():
                if r == CLASSIFIER:
                    continue
                y, w2 = sums
                f = kernel.cfg.regions[r].floor if floor else 0.0
                out[r][sample] = {"nominal": k * y[g, m] + f, "sumw2": k * k * w2[g, m]}
    return out


def classifier_by_sample(kernel: Kernel, per_set) -> dict | None:
    """The classifier's sums by set, ``(sets, 3)`` (None: no classifier objective) →
    ``{nominal sample: (Σw·(−log s), Σw·(−log(1 − s)), Σw)}`` (:mod:`diffana.classifier`)."""
    if per_set is None:
        return None
    nominal = kernel.cfg.nominal_samples
    return {sample: per_set[g] for g, members in enumerate(kernel.groups)
            for sample, variant in members.items() if sample in nominal and variant is None}


def samples_of(kernel: Kernel, g: int, events: dict):
    """``(sample, {region: (x, w)})`` of each sample of set ``g``."""
    for sample, variant in kernel.groups[g].items():
        m, k = kernel.variant_index(variant)
        yield sample, {r: (x, k * w[m]) for r, (x, w) in events.items()}


# --- one padded chunk (the compiled engine) ----------------------------------------------------


def chunk_stage_events(kernel: Kernel, params: dict, chunk: dict, hard: bool) -> tuple:
    ops = ragged.CompiledOps(chunk, kernel.layout.events, kernel.layout.runs)
    return stage_events(kernel, ops, params, chunk["weight"], hard)


def chunk_region_events(kernel: Kernel, params: dict, chunk: dict, hard: bool) -> dict:
    return chunk_stage_events(kernel, params, chunk, hard)[0]


def _by_set(kernel: Kernel, chunk: dict, local):
    """Sums by block and slot ``(blocks, slots, ...)`` → by event set ``(sets, ...)``."""
    n_sets, slots = len(kernel.groups), chunk["slots"].reshape(-1)
    return jax.tree_util.tree_map(
        lambda a: jnp.zeros((n_sets, *a.shape[2:]), a.dtype).at[slots].add(
            a.reshape(-1, *a.shape[2:]), mode="drop"), local)


def chunk_yields(kernel: Kernel, params: dict, chunk: dict) -> dict:
    """``{region: (yields, sumw2)}`` of one chunk, each ``(sets, variants, bins)``; with a
    ``binary_cross_entropy`` objective also the classifier's sums by set, ``(sets, 3)``, at
    :data:`CLASSIFIER`."""
    layout, at = kernel.layout, chunk["events"]["__slot__"]
    regions, scores = chunk_stage_events(kernel, params, chunk, False)
    local = kde(kernel, regions, at, layout.slots, layout.block, params)
    if scores is not None:
        local[CLASSIFIER] = classifier.sums(*scores, at, layout.slots, layout.block)
    return _by_set(kernel, chunk, local)


def chunk_classifier(kernel: Kernel, part: str, hard: bool, params: dict, chunk: dict):
    """The classifier's sums of one chunk by set, ``(sets, 3)``, of the events of ``part``
    (``hard``: with hard cuts, the honest evaluation)."""
    kernel, layout = kernel.for_part(part), kernel.layout
    _, scores = chunk_stage_events(kernel, params, chunk, hard)
    return _by_set(kernel, chunk, classifier.sums(*scores, chunk["events"]["__slot__"],
                                                  layout.slots, layout.block))


def chunk_moments(kernel: Kernel, params: dict, chunk: dict) -> dict:
    """:func:`input_moments` of one chunk (padding events have weight 0)."""
    ops = ragged.CompiledOps(chunk, kernel.layout.events, kernel.layout.runs)
    return input_moments(kernel, ops, params, chunk["weight"])


def chunk_yields_at(kernel: Kernel, u, params_fixed: dict, chunk: dict) -> dict:
    """:func:`chunk_yields` at unit-box coordinates ``u``."""
    return chunk_yields(kernel, kernel.space.from_unit(u, params_fixed), chunk)


def chunk_jacobian(kernel: Kernel, u, params_fixed: dict, chunk: dict):
    """Yields of one chunk and their Jacobian in ``u`` (forward mode: one tangent each)."""
    def yields(v):
        y = chunk_yields_at(kernel, v, params_fixed, chunk)
        return y, y

    jac, y = jax.jacfwd(yields, has_aux=True)(u)
    return y, jac


def chunk_cut_jacobian(kernel: Kernel, u, params_fixed: dict, chunk: dict):
    """Yields of one chunk and their Jacobian in the scalar parameters' part of ``u`` only
    (a network's weights held: a tangent per cut, not per weight)."""
    k = len(kernel.space.trainable)

    def yields(v):
        y = chunk_yields_at(kernel, jnp.concatenate([v, u[k:]]), params_fixed, chunk)
        return y, y

    jac, y = jax.jacfwd(yields, has_aux=True)(u[:k])
    return y, jac


def chunk_vjp(kernel: Kernel, u, params_fixed: dict, cotangent, chunk: dict):
    """``cotangent · ∂yields/∂u`` of one chunk (traced for reverse mode only,
    :func:`diffana.soft.reverse_mode`)."""
    with reverse_mode():
        _, pullback = jax.vjp(lambda v: chunk_yields_at(kernel, v, params_fixed, chunk), u)
        return pullback(cotangent)[0]


jit_events = persistent(jax.jit(chunk_region_events, static_argnums=(0, 3)), "events", (0, 3))
jit_yields = persistent(jax.jit(chunk_yields, static_argnums=0), "yields", (0,))
jit_jacobian = persistent(jax.jit(chunk_jacobian, static_argnums=0), "jacobian", (0,))
jit_vjp = persistent(jax.jit(chunk_vjp, static_argnums=0), "vjp", (0,))


@jax.jit
def contract(cotangent, jacobian):
    """``Σ cotangent · jacobian`` over every leaf: the chain rule from yields to ``u``."""
    return sum(jnp.tensordot(c, j, axes=c.ndim) for c, j in
               zip(jax.tree_util.tree_leaves(cotangent), jax.tree_util.tree_leaves(jacobian),
                   strict=True))

#: The chunk functions executors map over chunks and sum, by name (a name travels to a
#: Dask worker; the function it names is compiled there).
CHUNK_FUNCTIONS = {"yields": jit_yields, "jacobian": jit_jacobian, "vjp": jit_vjp,
                   "cut_jacobian": jax.jit(chunk_cut_jacobian, static_argnums=0),
                   "moments": jax.jit(chunk_moments, static_argnums=0),
                   "classifier": jax.jit(chunk_classifier, static_argnums=(0, 1, 2))}


def fill_hard(kernel: Kernel, samples: list[str], parts, params: dict | None = None) -> dict:
    """``[region][sample]`` ``hist`` histograms of ``(set, {region: (x, W)})`` parts, on each
    region's edges (trainable ones: at ``params``, the soft histogram's edges)."""
    edges = {r: np.asarray(region_edges(kernel, r, params)) for r in kernel.cfg.regions}
    hists = {r: {s: empty_histogram(edges[r], label=reg.observable) for s in samples}
             for r, reg in kernel.cfg.regions.items()}
    for g, events in parts:
        for sample, regions in samples_of(kernel, g, events):
            for r, (x, w) in regions.items():
                hard_histogram(x, w, edges[r], into=hists[r][sample])
    return hists


# --- the cutflow: hard selection step by step --------------------------------------------------


def requirement_label(req) -> str:
    """A requirement in a few words: ``jets ≥ 4``, ``lepton_pt > lepton_pt_min``."""
    if req.count is not None:
        return (f"{req.count} ≥ {req.at_least}" if req.at_least is not None
                else f"{req.count} = {req.exactly}")
    if req.observable is not None:
        return (f"{req.observable} > {req.above}" if req.above is not None
                else f"{req.observable} < {req.below}")
    subs = [requirement_label(r) for r in (req.all or req.any)]
    return "(" + (" and " if req.all is not None else " or ").join(subs) + ")"


def cutflow_weights(cfg: AnalysisConfig, plan: Plan, ops, params: dict, weight) -> list:
    """``[(step, weight after it)]``: the event weights after each hard selection step.

    The steps are the events as lowered (``all events``), then the top-level requirements
    applied one after the other, then, from there, each region's own requirements (a region
    without any is one step, the top-level selection).
    """
    weights = select.object_weights(cfg, plan, ops, params, True)
    obs = observe.evaluate(cfg, plan, ops, weights, params)

    def passing(req):
        return select.requirement_weight(cfg, plan, ops, req, weights, obs, params, True)

    steps = [("all events", weight)]
    for req in cfg.selection:
        steps.append((requirement_label(req), steps[-1][1] * passing(req)))
    common = steps[-1][1]
    for region, reg in cfg.regions.items():
        w = common
        for req in reg.selection:
            w = w * passing(req)
            steps.append((f"{region}: {requirement_label(req)}", w))
        if not reg.selection:
            steps.append((region, w))
    return steps


def cutflow_steps(cfg: AnalysisConfig, plan: Plan) -> list[str]:
    """The names of the cutflow's steps, in the order of :func:`cutflow_weights`."""
    steps = ["all events", *[requirement_label(r) for r in cfg.selection]]
    for region, reg in cfg.regions.items():
        steps += [f"{region}: {requirement_label(r)}" for r in reg.selection] or [region]
    return steps


def chunk_cutflow(kernel: Kernel, params: dict, chunk: dict):
    """The weighted and raw events of one chunk after each cutflow step, per event:
    ``(steps, 2, events)``."""
    ops = ragged.CompiledOps(chunk, kernel.layout.events, kernel.layout.runs)
    return jnp.stack([w for _, w in cutflow_weights(kernel.cfg, kernel.plan, ops, params,
                                                      cutflow_start(kernel.cfg, ops,
                                                                    chunk["weight"]))])


def cutflow_start(cfg: AnalysisConfig, ops, weight):
    """The weighted and raw events a cutflow starts from, ``(2, events)``: all the events, or
    with a ``split`` the test events (weights × 1/f, as the hard evaluations count them)."""
    raw = jnp.ones_like(weight)
    if cfg.split is not None:
        raw = raw * ops.event_branch(split.COLUMN)
    return jnp.stack([split.part_weight(cfg.split, "test", ops, weight), raw])


jit_cutflow = persistent(jax.jit(chunk_cutflow, static_argnums=0), "cutflow", (0,))
