"""Per-event observables, registered by name so a configuration can use them.

An observable is a function ``fn(ops, spec, weights, plan) -> per-event JAX array``:
``ops`` gives the ragged operations of the running engine (see :mod:`diffana.ragged`),
``spec`` is the :class:`~diffana.config.Observable` entry of the configuration,
``weights`` the per-object selection weights of every collection.

A kind may take other observables as its inputs and have trainable parameters of its own
(``reads`` and ``parameters``: the ``mlp`` kind, a learned observable); its function then
also receives the observables computed before it and its parameter group.

Every observable kind is one :class:`ObservableKind` record in :data:`KINDS`. Analyses add
their own with :func:`register_observable`:

    >>> from diffana.observe import KINDS, register_observable
    >>> @register_observable("n_soft", requires=("collection",))
    ... def n_soft(ops, spec, weights, plan):
    ...     return ops.sum(plan.collections[spec.collection].root, weights[spec.collection])
    >>> KINDS["n_soft"].requires
    ('collection',)
    >>> del KINDS["n_soft"]  # the example's kind goes again (the registry is the process's)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from diffana import network
from diffana.exceptions import ConfigError
from diffana.soft import SHORT_RUN, nth_selected, nth_selected_dense


@dataclass(frozen=True)
class ObservableKind:
    """An observable kind a configuration can name (``kind: <name>``)."""

    name: str
    compute: Callable  # ``compute(ops, spec, weights, plan) -> per-event array``
    requires: tuple[str, ...] = ()  # keys its configuration entry must give
    fields: tuple[str, ...] = ()  # fields of its collection it reads, besides ``field``
    prepare: Callable | None = None  # ``prepare(collection, spec) -> {name: NumPy array}``
    check: Callable | None = None  # ``check(name, spec, collections)``: raises ConfigError
    # ``reads(spec) -> [observable]``: the observables it takes as inputs; its function is
    # then ``compute(ops, spec, weights, plan, values, params)``
    reads: Callable | None = None
    # ``parameters(spec) -> {key: NumPy array}``: its parameter group's initial values;
    # ``weights`` is trained, the other keys are set once (e.g. a standardisation)
    parameters: Callable | None = None


KINDS: dict[str, ObservableKind] = {}


def register_observable(name: str, requires: tuple[str, ...] = (), fields: tuple[str, ...] = (),
                        prepare: Callable | None = None, check: Callable | None = None,
                        reads: Callable | None = None, parameters: Callable | None = None):
    """Register an observable function under ``name`` (usable as ``kind:`` in YAML).

    Args:
        name: the ``kind`` a configuration uses.
        requires: keys its configuration entry must give (``collection``, ``field``, or
            ``options.<key>``); the configuration loader checks them.
        fields: fields of its collection it reads (``pt``, ``eta``, ...), besides ``field``.
        prepare: ``prepare(collection, spec) -> {name: flat NumPy array}``, run once per
            sample when the events are lowered, on the hard-cut Awkward collection: the place
            for structure that no parameter changes (combinations, sort orders, kinematics).
            The observable reads it back with ``ops.prepared(spec_name)``.
        check: ``check(name, spec, collections)``, run when the plan is built (by ``run`` and
            ``validate`` alike, before any event is read): raises
            :class:`~diffana.exceptions.ConfigError` for a configuration the kind cannot
            compute; ``collections`` maps each collection to its
            :class:`~diffana.plan.CollectionPlan`.
        reads: ``reads(spec) -> [observable names]``: the observables the kind takes as
            inputs (each defined before it); ``fn`` is then called as ``fn(ops, spec,
            weights, plan, values, params)`` with ``values`` the observables computed so far
            and ``params`` its parameter group.
        parameters: ``parameters(spec) -> {key: NumPy array}``: the initial values of the
            kind's parameter group (named after the observable); ``weights`` is trainable.
    """

    def deco(fn: Callable) -> Callable:
        KINDS[name] = ObservableKind(name, fn, tuple(requires), tuple(fields), prepare, check,
                                     reads, parameters)
        return fn

    return deco


def _root(spec, plan):
    return plan.collections[spec.collection].root


@register_observable("sum", requires=("collection", "field"))
def weighted_sum(ops, spec, weights, plan):
    """Soft sum of a field over selected objects, e.g. soft H_T = Σ w·pT."""
    root = _root(spec, plan)
    return ops.sum(root, weights[spec.collection] * ops.field(root, spec.field))


@register_observable("count", requires=("collection",))
def soft_count(ops, spec, weights, plan):
    """Soft number of selected objects: Σ w."""
    return ops.sum(_root(spec, plan), weights[spec.collection])


def _hard_collection(name, spec, collections) -> None:
    """``leading`` reads structure: its collection may be shaped by hard cuts only."""
    cp = collections[spec.collection]
    if cp.parent is not None or cp.soft_cuts:
        raise ConfigError(
            f"observables.{name}.collection: 'leading' needs a collection without soft cuts, "
            f"and {spec.collection!r} has them; use kind: nth (soft), or cut on the event "
            f"observable instead"
        )


@register_observable("leading", requires=("collection", "field"), check=_hard_collection)
def leading(ops, spec, weights, plan):
    """A field of the first (highest-pT) object of a branch-backed collection.

    Only hard cuts may shape the collection (they were applied when lowering), so the
    first object is structure; the event has ``options.default`` (0) when it has none.
    """
    cp = plan.collections[spec.collection]
    default = float(spec.options.get("default", 0.0))
    return ops.first(cp.root, ops.field(cp.root, spec.field), default)


@register_observable("nth", requires=("collection", "field"))
def nth(ops, spec, weights, plan):
    """A field of the i-th selected object (``options.index``, default 0: the leading one).

    Soft: ``Σ_c p_c x_c`` with ``p_c`` the probability that object ``c`` is the i-th selected
    (:func:`diffana.soft.nth_selected`); 0 for an event with fewer selected objects.
    """
    root = plan.collections[spec.collection].root
    index = int(spec.options.get("index", 0))
    depth = max(int(spec.options.get("depth", 0)), index + 1)
    cache = getattr(ops, "cache", {})
    key = ("nth", spec.collection, depth)
    if key not in cache:
        w = ops.flat(root, weights[spec.collection])
        run = ops.max_run(root)
        if hasattr(ops, "segments") and run is not None and run <= SHORT_RUN:
            cache[key] = nth_selected_dense(w, ops.segments(root), depth, run)
        else:  # no layout of events (the awkward engine) or long runs
            cache[key] = nth_selected(w, ops.starts(root), depth, run)
    p = cache[key][:, index]
    return ops.sum_flat(root, p * ops.flat(root, ops.field(root, spec.field)))


@register_observable("branch", requires=("options.branch",))
def event_branch(ops, spec, weights, plan):
    """A flat per-event branch (``options.branch``, e.g. ``MET_pt``)."""
    return ops.event_branch(str(spec.options["branch"]))


# --- a learned observable: a network of other observables -------------------------------------

MLP_DEFAULTS = {"hidden": [32, 32], "activation": "relu", "seed": 0}


def mlp_options(spec) -> dict:
    """An ``mlp`` observable's options with their defaults."""
    return {**MLP_DEFAULTS, **spec.options}


def mlp_shape(spec) -> network.Shape:
    o = mlp_options(spec)
    return network.Shape(len(o["inputs"]), tuple(int(h) for h in o["hidden"]))


def _mlp_check(name, spec, collections) -> None:
    o = mlp_options(spec)
    key = f"observables.{name}.options"
    inputs = o.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise ConfigError(f"{key}.inputs: an mlp needs a list of one or more input observables, "
                          f"got {inputs!r}")
    hidden = o["hidden"]
    if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ConfigError(f"{key}.hidden: expected a list of layer widths (positive integers), "
                          f"got {hidden!r}")
    if o["activation"] not in network.ACTIVATIONS:
        raise ConfigError(f"{key}.activation: {o['activation']!r} is not one of "
                          f"{sorted(network.ACTIVATIONS)}")
    if not isinstance(o["seed"], int) or isinstance(o["seed"], bool):
        raise ConfigError(f"{key}.seed: expected an integer, got {o['seed']!r}")
    unknown = sorted(set(o) - {"inputs", *MLP_DEFAULTS, "name"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not an mlp option (expected inputs, hidden, "
                          "activation, seed)")


def _mlp_parameters(spec) -> dict:
    o, shape = mlp_options(spec), mlp_shape(spec)
    return {"weights": network.init(shape, int(o["seed"])),
            "shift": np.zeros(shape.inputs), "scale": np.ones(shape.inputs)}


@register_observable("mlp", requires=("options.inputs",), check=_mlp_check,
                     reads=lambda spec: list(spec.options["inputs"]), parameters=_mlp_parameters)
def mlp(ops, spec, weights, plan, values, params):
    """A network's score in (0, 1) of other observables (``options.inputs``): a learned
    observable, trained with the cuts (its weights: a parameter group named after it).

    ``options``: ``inputs`` (observables defined before it), ``hidden`` (layer widths,
    default ``[32, 32]``), ``activation`` (``relu``, ``tanh``, ``gelu``, …), ``seed`` (of
    the initial weights, 0). The inputs are standardised with the weighted mean and width
    of the training events at the initial cuts.
    """
    o = mlp_options(spec)
    x = jnp.stack([jnp.asarray(values[i], dtype=jnp.float64) for i in o["inputs"]], axis=1)
    return network.apply(mlp_shape(spec), o["activation"], params["weights"], x,
                         params["shift"], params["scale"])


def evaluate(cfg, plan, ops, weights: dict, params: dict | None = None) -> dict:
    """All observables of the configuration, in order.

    The function receives the configuration entry with ``options["name"]`` set to the
    observable's name (the key of what its ``prepare`` stored). A kind with inputs
    (``reads``) also receives the observables computed before it and its parameter group,
    ``params[name]``.
    """
    # ``nth`` observables of one collection share one scan, deep enough for all of them
    depth: dict[str, int] = {}
    for obs in cfg.observables.values():
        if obs.kind == "nth":
            index = int(obs.options.get("index", 0))
            depth[obs.collection] = max(depth.get(obs.collection, 0), index + 1)
    ops.cache = {}  # results shared between the observables of one evaluation
    out = {}
    for name, obs in cfg.observables.items():
        options = {**obs.options, "name": name}
        if obs.kind == "nth":
            options["depth"] = depth[obs.collection]
        spec = obs.model_copy(update={"options": options})
        kind = KINDS[obs.kind]
        if kind.reads is not None:
            out[name] = kind.compute(ops, spec, weights, plan, out, (params or {})[name])
        else:
            out[name] = kind.compute(ops, spec, weights, plan)
    return out
