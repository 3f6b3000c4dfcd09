"""Per-event observables, registered by name so a configuration can use them.

An observable is a function ``fn(ops, spec, weights, plan) -> per-event JAX array``:
``ops`` gives the ragged operations of the running engine (see :mod:`diffana.ragged`),
``spec`` is the :class:`~diffana.config.Observable` entry of the configuration,
``weights`` the per-object selection weights of every collection.

Every observable kind is one :class:`ObservableKind` record in :data:`KINDS`. Analyses add
their own with :func:`register_observable`:

    >>> from diffana.observe import KINDS, register_observable
    >>> @register_observable("n_soft", requires=("collection",))
    ... def n_soft(ops, spec, weights, plan):
    ...     return ops.sum(plan.collections[spec.collection].root, weights[spec.collection])
    >>> KINDS["n_soft"].requires
    ('collection',)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from diffana.exceptions import ConfigError
from diffana.soft import nth_selected


@dataclass(frozen=True)
class ObservableKind:
    """An observable kind a configuration can name (``kind: <name>``)."""

    name: str
    compute: Callable  # ``compute(ops, spec, weights, plan) -> per-event array``
    requires: tuple[str, ...] = ()  # keys its configuration entry must give
    fields: tuple[str, ...] = ()  # fields of its collection it reads, besides ``field``
    prepare: Callable | None = None  # ``prepare(collection, spec) -> {name: NumPy array}``
    check: Callable | None = None  # ``check(name, spec, collections)``: raises ConfigError


KINDS: dict[str, ObservableKind] = {}


def register_observable(name: str, requires: tuple[str, ...] = (), fields: tuple[str, ...] = (),
                        prepare: Callable | None = None, check: Callable | None = None):
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
    """

    def deco(fn: Callable) -> Callable:
        KINDS[name] = ObservableKind(name, fn, tuple(requires), tuple(fields), prepare, check)
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
        cache[key] = nth_selected(w, ops.starts(root), depth, ops.max_run(root))
    p = cache[key][:, index]
    return ops.sum_flat(root, p * ops.flat(root, ops.field(root, spec.field)))


@register_observable("branch", requires=("options.branch",))
def event_branch(ops, spec, weights, plan):
    """A flat per-event branch (``options.branch``, e.g. ``MET_pt``)."""
    return ops.event_branch(str(spec.options["branch"]))


def evaluate(cfg, plan, ops, weights: dict) -> dict:
    """All observables of the configuration, in order.

    The function receives the configuration entry with ``options["name"]`` set to the
    observable's name (the key of what its ``prepare`` stored).
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
        out[name] = KINDS[obs.kind].compute(ops, spec, weights, plan)
    return out
