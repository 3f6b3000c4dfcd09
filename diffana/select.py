"""Event selection from the configuration: per-object and per-event weights.

The soft operations themselves (and their hard twins) are in :mod:`diffana.soft`; this
module applies them to the collections, cuts and requirements of a configuration.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffana.config import AnalysisConfig, Requirement
from diffana.ragged import Plan
from diffana.soft import at_least, exactly, soft_above, soft_and, soft_below, soft_or


def _threshold(cfg: AnalysisConfig, params: dict, value):
    """A threshold's value and temperature: a parameter (soft) or a number (hard, t = 1)."""
    if isinstance(value, str):
        return params[value], cfg.parameters[value].temperature, False
    return value, 1.0, True


def object_weights(cfg: AnalysisConfig, the_plan: Plan, ops, params: dict, hard: bool) -> dict:
    """Per-object weights of every collection, in configuration order.

    A subset (``source:`` another collection) multiplies its parent's weights by its own
    cuts. Hard cuts on branch-backed collections were applied when lowering; hard cuts on
    subsets are constant masks.
    """
    weights: dict = {}
    for name, cp in the_plan.collections.items():
        w = weights[cp.parent] if cp.parent is not None else None
        mask = ops.mask(cp.root, name) if cp.parent is not None else None
        if mask is not None:
            w = mask if w is None else w * mask
        for cut in cp.soft_cuts:
            x = ops.field(cp.root, cut.field)
            if cut.abs:
                x = ops.abs(x)
            c, t, _ = _threshold(cfg, params, cut.above if cut.above is not None else cut.below)
            fn = soft_above if cut.above is not None else soft_below
            cw = fn(x, c, t, hard=hard, ops=ops)
            w = cw if w is None else w * cw
        weights[name] = ops.ones(cp.root) if w is None else w
    return weights


def requirement_weight(cfg: AnalysisConfig, the_plan: Plan, ops, req: Requirement, weights: dict,
                       observables: dict, params: dict, hard: bool):
    """Per-event weight of one event requirement."""
    if req.count is not None:
        n = ops.sum(the_plan.collections[req.count].root, weights[req.count])
        if req.at_least is not None:
            return at_least(n, req.at_least, req.temperature, hard=hard)
        return exactly(n, req.exactly, req.temperature, hard=hard)
    if req.observable is not None:
        x = observables[req.observable]
        threshold = req.above if req.above is not None else req.below
        c, t, fixed = _threshold(cfg, params, threshold)
        fn = soft_above if req.above is not None else soft_below
        return fn(x, c, t, hard=hard or fixed)
    subs = [requirement_weight(cfg, the_plan, ops, r, weights, observables, params, hard)
            for r in (req.all or req.any)]
    return soft_and(subs) if req.all is not None else soft_or(subs)


def event_weights(cfg: AnalysisConfig, the_plan: Plan, ops, requirements, weights: dict,
                  observables: dict, params: dict, hard: bool):
    """Product of the requirements' per-event weights (1 when there are none)."""
    out = jnp.ones(ops.n_events, dtype=jnp.float64)
    for req in requirements:
        out = out * requirement_weight(cfg, the_plan, ops, req, weights, observables, params, hard)
    return out
