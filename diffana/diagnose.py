"""Where a NaN or inf first appears: the stage (select, observe, histogram, model/infer),
region and sample, for the message of a run that stopped at a non-finite value."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffana.analysis import Analysis


def non_finite_stage(ana: Analysis, params: dict, parameter: str | None) -> str:
    """Where a NaN or inf first appears at ``params``: ``stage: ...[, region R, sample S]``.

    The values stage by stage (select, observe, histogram, model/infer), then, for a
    non-finite gradient, the derivative of each stage in ``parameter``.
    """
    def first_bad(tree: dict):
        for r, per_sample in tree.items():  # tree[region or sample][sample or region]
            for s, leaf in per_sample.items():
                if not all(np.all(np.isfinite(np.asarray(a))) for a in
                           jax.tree_util.tree_leaves(leaf)):
                    return r, s
        return None

    def events_stage(events: dict) -> str | None:
        for sample, regions in events.items():
            for region, (x, w) in regions.items():
                if not np.all(np.isfinite(np.asarray(w))):
                    return f"stage: select, region {region}, sample {sample}"
                if not np.all(np.isfinite(np.asarray(x))):
                    return f"stage: observe, region {region}, sample {sample}"
        return None

    try:
        found = events_stage(ana.region_events(params))
        if found:
            return found
        yields = ana.yields(params)
        bad = first_bad(yields)
        if bad:
            return f"stage: histogram, region {bad[0]}, sample {bad[1]}"
        if not math.isfinite(float(ana.objective_from_yields(yields))):
            return "stage: model/infer"
        if parameter is None:
            return "stage: not reproduced at these parameters"
        theta = jnp.asarray(params[parameter], dtype=jnp.float64)

        def along(fn):  # ∂fn/∂parameter (forward mode, one tangent)
            return jax.jvp(lambda t: fn({**params, parameter: t}), (theta,),
                           (jnp.ones_like(theta),))[1]

        found = events_stage(along(ana.region_events))
        if found:
            return found
        bad = first_bad(along(ana.yields))
        if bad:
            return f"stage: histogram, region {bad[0]}, sample {bad[1]}"
        bad = first_bad(jax.grad(ana.objective_from_yields)(yields))
        if bad:
            return f"stage: model/infer, from the yields of region {bad[0]}, sample {bad[1]}"
        return "stage: none on its own (each stage and its derivative are finite)"
    except Exception as err:  # the diagnosis must not hide the stop itself
        return f"stage: not determined ({type(err).__name__}: {err})".splitlines()[0]
