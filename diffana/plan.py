"""The plan: what a configuration asks of the events, resolved once.

- :class:`Plan`: the collections (root collection, soft and hard cuts), the branches to read,
  the observables that prepare structure when events are lowered (:func:`build`);
- :class:`Member`: a sample as a member of an event set, with its :data:`Variant` (the
  per-event weight factor that tells it from the set's events: :class:`Reweight`,
  :class:`Scaled`), from the configuration's variations (:func:`members`);
- :class:`ParameterSpace`: the parameters, their bounds and the unit box the optimiser
  works in (``to_unit``/``from_unit``).

Example:
    >>> from diffana.config import load_dict
    >>> cfg = load_dict({"samples": {"sig": {"files": ["s.root"], "cross_section": 1.0},
    ...                              "bkg": {"files": ["b.root"], "cross_section": 10.0}},
    ...                  "parameters": {"ht_min": {"value": 100, "bounds": [0, 400]}},
    ...                  "regions": {"SR": {"observable": "ht",
    ...                              "binning": {"bins": 3, "low": 0, "high": 300},
    ...                              "selection": [{"observable": "ht", "above": "ht_min"}]}},
    ...                  "observables": {"ht": {"kind": "sum", "collection": "jets",
    ...                                         "field": "pt"}},
    ...                  "objects": {"jets": {"source": "Jet"}},
    ...                  "model": {"signal": ["sig"]}, "luminosity": 1.0})
    >>> build(cfg).branches
    ['Jet_pt']
    >>> space = ParameterSpace.of(cfg)
    >>> float(space.to_unit(space.initial_params())[0])
    0.25
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffana import observe, split
from diffana.config import AnalysisConfig, ObjectCut, Observable
from diffana.exceptions import ConfigError
from diffana.histogram import width_parameters
from diffana.naming import edges_group, field_branch


@dataclass(frozen=True)
class CollectionPlan:
    """Where a collection's data comes from: its root collection, branches and cuts."""

    name: str
    root: str  # the branch-backed collection it is a subset of (itself for a root)
    parent: str | None  # the collection it is a subset of, if any
    soft_cuts: tuple[ObjectCut, ...]
    hard_cuts: tuple[ObjectCut, ...]


class Prepared(NamedTuple):
    """An observable whose kind prepares structure when the events are lowered."""

    name: str
    spec: Observable


@dataclass(frozen=True, eq=False)
class Plan:
    """What to read and how to lower it, derived once from the configuration.

    Frozen, and hashable by identity: built once per analysis, it is a static argument of
    the compiled stage functions (see :mod:`diffana.stages`).
    """

    collections: dict[str, CollectionPlan]
    root_branches: dict[str, dict[str, str]]  # root -> field -> branch
    # per-event branches, and the part of each event (split.COLUMN) where split: is given
    event_branches: tuple[str, ...]
    # observables whose structure is computed once when lowering
    prepared: tuple[Prepared, ...] = ()

    @property
    def branches(self) -> list[str]:
        """The branches to read from the files (``event_branches`` but the columns made when
        reading: the part of each event, :data:`diffana.split.COLUMN`)."""
        out = [b for fields in self.root_branches.values() for b in fields.values()]
        read = [b for b in self.event_branches if b != split.COLUMN]
        return list(dict.fromkeys(out + read))


def _is_hard(cut: ObjectCut) -> bool:
    threshold = cut.above if cut.above is not None else cut.below
    return not isinstance(threshold, str)


def build(cfg: AnalysisConfig) -> Plan:
    """Resolve collections to their root collections and list the branches to read."""
    colls: dict[str, CollectionPlan] = {}
    mapping: dict[str, dict[str, str]] = {}
    for name, coll in cfg.objects.items():
        if coll.source in colls:
            root = colls[coll.source].root
            parent = coll.source
            if coll.fields:
                raise ConfigError(
                    f"objects.{name}.fields: a subset of {coll.source!r} takes its fields from "
                    f"objects.{root}.fields"
                )
        else:
            root, parent = name, None
            mapping[root] = dict(coll.fields)
        hard = tuple(c for c in coll.cuts if _is_hard(c))
        soft = tuple(c for c in coll.cuts if not _is_hard(c))
        colls[name] = CollectionPlan(name, root, parent, soft, hard)
        for cut in coll.cuts:
            mapping[root].setdefault(cut.field, field_branch(cfg.objects[root].source, cut.field))

    event_branches: list[str] = []
    prepared = []
    for i, (oname, obs) in enumerate(cfg.observables.items()):
        if observe.KINDS[obs.kind].check is not None:
            observe.KINDS[obs.kind].check(oname, obs, colls)
        if observe.KINDS[obs.kind].reads is not None:
            _check_inputs(oname, observe.KINDS[obs.kind].reads(obs), list(cfg.observables)[:i])
        if observe.KINDS[obs.kind].prepare is not None:
            prepared.append(Prepared(oname, obs))
        if obs.collection is not None:
            root = colls[obs.collection].root
            if obs.field is not None:
                mapping[root].setdefault(obs.field,
                                         field_branch(cfg.objects[root].source, obs.field))
            for f in [*observe.KINDS[obs.kind].fields, *obs.options.get("fields", [])]:
                mapping[root].setdefault(f, field_branch(cfg.objects[root].source, f))
        if "branch" in obs.options:
            event_branches.append(str(obs.options["branch"]))
    groups = ["cuts", *(n for n, obs in cfg.observables.items()
                        if observe.KINDS[obs.kind].parameters),
              *(edges_group(r) for r, reg in cfg.regions.items() if reg.binning.trainable)]
    for group in cfg.optimiser.groups:
        if group not in groups:
            raise ConfigError(f"optimiser.groups.{group}: not a parameter group (the groups: "
                              f"{', '.join(groups)})")
    if cfg.split is not None:  # each event's part, a column made when the events are read
        event_branches.append(split.COLUMN)
    for root, fields in mapping.items():
        if not fields:
            # A collection used only for counting still needs its multiplicity: read pT.
            fields["pt"] = field_branch(cfg.objects[root].source, "pt")
    return Plan(colls, mapping, tuple(event_branches), tuple(prepared))


def _check_inputs(name: str, inputs: list[str], before: list[str]) -> None:
    """An observable's inputs must be observables defined before it."""
    for j, x in enumerate(inputs):
        if x not in before:
            raise ConfigError(f"observables.{name}.options.inputs[{j}]: {x!r} is not an "
                              f"observable defined before {name!r} (defined before it: "
                              f"{before})")


@dataclass(frozen=True)
class Reweight:
    """Event weights × ``(1 + slope · observable)``: a soft, per-event factor."""

    observable: str
    slope: float


@dataclass(frozen=True)
class Scaled:
    """Event weights × a constant ``factor``."""

    factor: float


#: How a sample's event weights derive from its event set's: as they are (``None``), or
#: by a factor (a ``reweight`` or ``weight`` variation shares its nominal sample's events).
Variant = Reweight | Scaled | None


@dataclass(frozen=True)
class Member:
    """A sample as a member of one of its reader's event sets.

    ``event_set`` is ``None`` for the events as read, or the name of a computed (``scale``
    or ``smear``) variation, whose events are a set of their own.
    """

    sample: str
    event_set: str | None
    variant: Variant = None


def members(cfg: AnalysisConfig, name: str) -> list[Member]:
    """Sample ``name`` and each computed variation of it, as members of event sets."""
    out = [Member(name, None)]
    for vname, (sample, variation) in cfg.variation_samples().items():
        if sample != name:
            continue
        var = cfg.variations[variation]
        if var.reweight is not None:  # same events, a soft per-event factor
            out.append(Member(vname, None, Reweight(str(var.reweight["observable"]),
                                                    float(var.reweight["slope"]))))
        elif var.weight is not None:  # same events, a constant factor
            out.append(Member(vname, None, Scaled(float(var.weight))))
        else:  # a scale or smear: varied events, a set of their own
            out.append(Member(vname, vname))
    return out


@dataclass(frozen=True, eq=False)
class ParameterSpace:
    """The analysis parameters and the unit box of the trainable ones.

    ``u = (θ - lower) / (upper - lower)`` maps each trainable parameter's bounds to [0, 1]:
    the optimiser steps in ``u``, so one learning rate suits cuts in GeV and in b-tag score.

    ``groups``: the parameter groups of observables that have parameters of their own (a
    network's weights, :func:`diffana.observe.register_observable`), by observable, then the
    trainable bin edges of regions (``binnings``: region → its group, ``<region>_edges``,
    whose ``weights`` are :func:`diffana.histogram.trainable_edges`' parameters): their
    initial values ``{key: array}``. A group's ``weights`` are trained: they follow the
    scalar parameters in ``u``, as they are (unbounded); its other keys are set once
    (``params[group][key]``).
    """

    values: dict[str, float]  # every parameter's configured value
    trainable: list[str]
    lower_bounds: np.ndarray
    upper_bounds: np.ndarray
    groups: dict[str, dict] = dataclasses.field(default_factory=dict)
    binnings: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, cfg: AnalysisConfig) -> ParameterSpace:
        trainable = [n for n, p in cfg.parameters.items() if p.trainable]
        lo = np.array([cfg.parameters[n].bounds[0] for n in trainable], dtype=np.float64)
        hi = np.array([cfg.parameters[n].bounds[1] for n in trainable], dtype=np.float64)
        groups = {name: observe.KINDS[obs.kind].parameters(obs)
                  for name, obs in cfg.observables.items()
                  if obs.kind in observe.KINDS and observe.KINDS[obs.kind].parameters}
        binnings = {r: edges_group(r) for r, reg in cfg.regions.items() if reg.binning.trainable}
        for r, group in binnings.items():
            groups[group] = {"weights": width_parameters(cfg.regions[r].binning.edges)}
        return cls({n: p.value for n, p in cfg.parameters.items()}, trainable, lo, hi, groups,
                   binnings)

    @property
    def networks(self) -> list[str]:
        """The groups of observables (networks), whose inputs are standardised."""
        edges = set(self.binnings.values())
        return [g for g in self.groups if g not in edges]

    @property
    def size(self) -> int:
        """The length of ``u``: the trainable scalars and every group's weights."""
        return len(self.trainable) + sum(len(g["weights"]) for g in self.groups.values())

    def group_slices(self) -> dict[str, slice]:
        """Where each part of ``u`` is: ``{"cuts": the scalars, group: its weights}``."""
        out, at = {"cuts": slice(0, len(self.trainable))}, len(self.trainable)
        for name, g in self.groups.items():
            out[name] = slice(at, at + len(g["weights"]))
            at += len(g["weights"])
        return out

    @property
    def unit_names(self) -> list[str]:
        """A name for each entry of ``u`` (``nn_score[17]``: a group's weight)."""
        return self.trainable + [f"{name}[{i}]" for name, g in self.groups.items()
                                 for i in range(len(g["weights"]))]

    def unit_box(self) -> tuple[np.ndarray, np.ndarray]:
        """The bounds of ``u``: [0, 1] for each scalar, unbounded for the weights."""
        free = self.size - len(self.trainable)
        return (np.concatenate([np.zeros(len(self.trainable)), np.full(free, -np.inf)]),
                np.concatenate([np.ones(len(self.trainable)), np.full(free, np.inf)]))

    def initial_params(self) -> dict:
        """All parameters at their configured values, as float64 JAX scalars (and each
        group's initial values, as float64 JAX arrays)."""
        params = {n: jnp.asarray(v, dtype=jnp.float64) for n, v in self.values.items()}
        for name, g in self.groups.items():
            params[name] = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in g.items()}
        return params

    def to_unit(self, params: dict) -> jax.Array:
        """Trainable parameters mapped to the unit box: ``u = (θ - lo) / (hi - lo)``,
        then each group's weights as they are."""
        if self.trainable:
            theta = jnp.stack([jnp.asarray(params[n], dtype=jnp.float64) for n in self.trainable])
            u = (theta - self.lower_bounds) / (self.upper_bounds - self.lower_bounds)
        else:
            u = jnp.zeros(0, dtype=jnp.float64)
        if not self.groups:
            return u
        return jnp.concatenate([u, *(jnp.asarray(params[name]["weights"], dtype=jnp.float64)
                                     for name in self.groups)])

    def from_unit(self, u, fixed: dict | None = None) -> dict:
        """All parameters, the trainable ones from unit-box coordinates ``u``."""
        params = dict(fixed or self.initial_params())
        k = len(self.trainable)
        theta = self.lower_bounds + (self.upper_bounds - self.lower_bounds) * (
            u[:k] if self.groups else u)
        for i, n in enumerate(self.trainable):
            params[n] = theta[i]
        for name, where in list(self.group_slices().items())[1:]:
            group = params.get(name) or {k: jnp.asarray(v) for k, v in self.groups[name].items()}
            params[name] = {**group, "weights": u[where]}
        return params


def event_sets(cfg: AnalysisConfig) -> tuple[list[dict[str, Variant]], dict]:
    """The event sets of a configuration: ``(groups, index)``.

    ``groups[g]`` maps each sample whose events are set ``g`` to its variant;
    ``index[(sample reader, set key)]`` is ``g`` (sets numbered in order of first use).
    """
    groups: list[dict[str, Variant]] = []
    index: dict = {}
    for name in cfg.samples:
        for m in members(cfg, name):
            key = (name, m.event_set)
            if key not in index:
                index[key] = len(groups)
                groups.append({})
            groups[index[key]][m.sample] = m.variant
    return groups, index
