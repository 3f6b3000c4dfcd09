"""What the compiled executors share: chunk functions mapped over chunks and summed.

``∂loss/∂u = Σ_chunks ∂loss/∂yields · ∂yields_chunk/∂u``: forward mode takes each chunk's
yields and Jacobian in one pass (a tangent per parameter); reverse mode takes the yields,
then a VJP per chunk with the cotangent ``∂loss/∂yields``. Either holds one chunk's
intermediate values at a time.
"""

from __future__ import annotations

from collections import deque

import jax
import jax.numpy as jnp
import numpy as np

from diffana.executors.setup import Setup
from diffana.exported import persistent
from diffana.soft import reverse_mode
from diffana.stages import (
    CHUNK_FUNCTIONS,
    CLASSIFIER,
    Kernel,
    by_sample,
    classifier_by_sample,
    contract,
    fill_hard,
)
from diffana.stats.objective import Objective, jit_value, loss

STREAM_FORWARD_MAX = 8  # per-chunk modes, gradient auto: forward up to this many parameters


def loss_of_sums(kernel: Kernel, objective: Objective, stacked: dict):
    """The loss of the chunk yields summed, ``{region: (yields, sumw2)}`` by set (and a
    classifier's sums, :data:`~diffana.stages.CLASSIFIER`)."""
    return loss(objective, by_sample(kernel, stacked),
                classifier_by_sample(kernel, stacked.get(CLASSIFIER)))


#: the loss and ``∂loss/∂(summed chunk yields)``: the cotangent of the per-chunk modes
jit_loss_and_cotangent = persistent(jax.jit(jax.value_and_grad(loss_of_sums, argnums=2),
                                            static_argnums=(0, 1)), "loss_and_cotangent", (0, 1))


def reverse_step(yields_at, loss_of, u):
    """``(loss, ∂loss/∂u, ∂loss/∂yields)`` of ``loss_of(yields_at(u))``: the yields' VJP with
    the loss's gradient in them as its cotangent, traced for reverse mode only
    (:func:`diffana.soft.reverse_mode`). The cotangent is the one the backward pass computes
    on its way (the sensitivity's)."""
    with reverse_mode():
        yields, pullback = jax.vjp(yields_at, u)
        value, cotangent = jax.value_and_grad(loss_of)(yields)
        (grad,) = pullback(cotangent)
    return value, grad, cotangent


def sum_over(name: str, kernel: Kernel, args: tuple, chunks, in_flight: int | None = None):
    """``Σ CHUNK_FUNCTIONS[name](kernel, *args, chunk)`` over these device chunks, in order.

    JAX dispatches each chunk's computation and returns at once; ``in_flight`` bounds how
    many may wait to run (each keeps its chunk alive): chunks that arrive faster than they
    are computed (streamed from the lowered-chunk cache) would otherwise all be held.
    """
    fn = CHUNK_FUNCTIONS[name]
    total, pending = None, deque()
    for chunk in chunks:
        r = fn(kernel, *args, chunk)
        total = r if total is None else jax.tree_util.tree_map(jnp.add, total, r)
        if in_flight is not None:
            pending.append(total)
            if len(pending) > in_flight:
                jax.block_until_ready(pending.popleft())
    return total


class ChunkedExecutor:
    """Base of the compiled executors: subclasses give :meth:`map_reduce` and
    :meth:`event_parts` (and set ``self.kernel`` with its layout)."""

    holds_events = False
    alongside = False

    def __init__(self, setup: Setup):
        self.setup = setup
        self.kernel = setup.kernel
        self.objective_spec = setup.objective
        #: the configured gradient mode (``auto`` resolved by :attr:`gradient_mode`); set it
        #: to differentiate the same chunks another way
        self.gradient = setup.kernel.cfg.gradient

    def map_reduce(self, name: str, args: tuple):
        """``Σ_chunks CHUNK_FUNCTIONS[name](kernel, *args, chunk)``."""
        raise NotImplementedError

    def event_parts(self, params: dict, hard: bool, part: str | None = None):
        raise NotImplementedError

    def part_kernel(self, part: str | None) -> Kernel:
        """The kernel weighing ``part`` of the events (None: the training part)."""
        return self.kernel if part is None else self.kernel.for_part(part)

    @property
    def gradient_mode(self) -> str:
        if self.gradient != "auto":
            return self.gradient
        # forward for few parameters, two passes (yields, VJP) for many; and two passes for
        # `nth` observables, whose reverse pass is the cheaper (soft.nth_selected_dense: the
        # AGC's streamed step 0.24 s in reverse against 0.42 s forward; without nth, forward
        # is the cheaper, 0.09 against 0.12 s on ttbar_vs_wjets)
        nth = any(o.kind == "nth" for o in self.kernel.cfg.observables.values())
        few = self.kernel.space.size <= STREAM_FORWARD_MAX
        return "forward" if few and not nth else "reverse"

    def yields(self, params: dict) -> dict:
        return by_sample(self.kernel, self.map_reduce("yields", (params,)))

    def yields_and_jacobian(self, params: dict) -> tuple[dict, dict]:
        space = self.kernel.space
        # with a network, the Jacobian in the cuts only (a tangent per weight is too many)
        y, jac = self.map_reduce("cut_jacobian" if space.groups else "jacobian",
                                 (space.to_unit(params), params))
        # sorted by sample in NumPy (products, each rounded once as in JAX: the same numbers)
        # and divided by the box's widths in one JAX operation per template (JAX's division
        # and NumPy's differ in the last bit), instead of hundreds of small operations each
        # dispatched alone (~0.2 ms)
        jac = by_sample(self.kernel, jax.tree_util.tree_map(np.asarray, jac), floor=False)
        scale = jnp.asarray(space.upper_bounds - space.lower_bounds)
        out = {r: {s: {k: dict(zip(space.trainable,
                                   np.moveaxis(np.asarray(jac[r][s][k] / scale), -1, 0),
                                   strict=True))
                       for k in ("nominal", "sumw2")} for s in jac[r]} for r in jac}
        return by_sample(self.kernel, y), out

    def objective(self, params: dict):
        stacked = self.map_reduce("yields", (params,))
        return jit_value(self.objective_spec, by_sample(self.kernel, stacked),
                         classifier_by_sample(self.kernel, stacked.get(CLASSIFIER)))

    def classifier_sums(self, params: dict, hard: bool, part: str = "test") -> dict:
        return classifier_by_sample(self.kernel,
                                    self.map_reduce("classifier", (part, hard, params)))

    def input_moments(self, params: dict) -> dict:
        """``{group: (Σw, Σw·x, Σw·x²)}`` of each network's inputs over the training events
        (see :func:`diffana.stages.input_moments`)."""
        return self.map_reduce("moments", (params,))

    def loss_and_grad(self, u, params_fixed: dict):
        if self.gradient_mode == "reverse":
            y = self.map_reduce("yields", (self.kernel.space.from_unit(u, params_fixed),))
            loss, ct = self._loss_and_cotangent(y)
            return loss, self.map_reduce("vjp", (u, params_fixed, ct))
        y, jac = self.map_reduce("jacobian", (u, params_fixed))
        loss, ct = self._loss_and_cotangent(y)
        return loss, contract(ct, jac)

    def loss_gradient_in_yields(self, params: dict) -> dict | None:
        """``∂loss/∂yields[region][sample] = {"nominal", "sumw2"}`` at ``params``, where a
        function compiled for the steps gives it (the fused step); else None."""
        return None

    def _loss_and_cotangent(self, stacked: dict):
        """The loss of summed chunk yields and its gradient in them."""
        return jit_loss_and_cotangent(self.kernel, self.objective_spec, stacked)

    def hard_histograms(self, params: dict, samples: list[str], part: str = "test") -> dict:
        return fill_hard(self.kernel, samples, self.event_parts(params, hard=True, part=part),
                         params)

    def close(self) -> None:
        pass
