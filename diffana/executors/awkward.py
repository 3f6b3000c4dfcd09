"""The awkward engine: the stages on JAX-backed Awkward arrays, differentiated eagerly.

Awkward cannot be jit-compiled (it sizes outputs from data values), so the ragged stages
are differentiated eagerly and chained with the compiled model and inference stages
(``∂loss/∂u = ∂loss/∂yields · ∂yields/∂u``). The cross-check and the teaching path; CPU only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffana import ragged
from diffana.executors.setup import Setup
from diffana.stages import (
    by_sample,
    cutflow_start,
    cutflow_weights,
    fill_hard,
    input_moments,
    kde,
    region_events,
)
from diffana.stats.objective import jit_loss_and_gradient, value


class AwkwardExecutor:
    """Each event set whole, as JAX-backed Awkward arrays."""

    holds_events = True
    alongside = False
    gradient_mode = "reverse"

    def __init__(self, setup: Setup):
        self.kernel, self.objective_spec, self.sets = setup.kernel, setup.objective, setup.sets
        ragged.enable_awkward_jax()

    def _events(self, g: int, params: dict, hard: bool, part: str | None = None) -> dict:
        # Fresh JAX-backed Awkward arrays per evaluation: arrays reused across nested
        # transforms (jacrev after a vjp) were seen to give wrong cotangents.
        lowered = self.sets[g].lowered
        kernel = self.kernel if part is None else self.kernel.for_part(part)
        return region_events(kernel, ragged.AwkwardOps(lowered), params,
                             jnp.asarray(lowered.weight), hard)

    def yields(self, params: dict) -> dict:
        per_set = [kde(self.kernel, self._events(g, params, False), params=params)
                   for g in range(len(self.sets))]
        return by_sample(self.kernel, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_set))

    def yields_and_jacobian(self, params: dict) -> tuple[dict, dict]:
        theta = {n: params[n] for n in self.kernel.space.trainable}
        y = self.yields(params)
        return y, jax.jacfwd(lambda th: self.yields({**params, **th}))(theta)

    def input_moments(self, params: dict) -> dict:
        parts = [input_moments(self.kernel, ragged.AwkwardOps(s.lowered), params,
                               jnp.asarray(s.lowered.weight)) for s in self.sets]
        return jax.tree_util.tree_map(lambda *a: sum(a), *parts)

    def objective(self, params: dict):
        # JAX-backed Awkward outputs under a transform cannot enter a jit-compiled function.
        return value(self.objective_spec, self.yields(params))

    def loss_and_grad(self, u, params_fixed: dict):
        space = self.kernel.space
        y, pullback = jax.vjp(lambda v: self.yields(space.from_unit(v, params_fixed)), u)
        loss, dloss_dy = jit_loss_and_gradient(self.objective_spec, y)
        return loss, pullback(dloss_dy)[0]

    def loss_gradient_in_yields(self, params: dict) -> None:
        return None  # nothing compiled gives it: the objective's gradient is taken

    def event_parts(self, params: dict, hard: bool, part: str | None = None):
        for g in range(len(self.sets)):
            yield g, self._events(g, params, hard, part)

    def cutflow_parts(self, params: dict):
        kernel = self.kernel
        for g in range(len(self.sets)):
            lowered = self.sets[g].lowered
            ops = ragged.CompiledOps(ragged.to_device(lowered.buffers), lowered.n_events)
            start = cutflow_start(kernel.cfg, ops, jnp.asarray(lowered.weight))
            yield g, jnp.stack([w for _, w in cutflow_weights(kernel.cfg, kernel.plan, ops,
                                                               params, start)])

    def hard_histograms(self, params: dict, samples: list[str], part: str = "test") -> dict:
        return fill_hard(self.kernel, samples, self.event_parts(params, hard=True, part=part),
                         params)

    def close(self) -> None:
        pass
