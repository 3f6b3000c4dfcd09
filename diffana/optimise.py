"""The optimisation loop: any optax optimiser, bounds respected, a progress bar and a history.

Parameters are optimised in unit-box coordinates ``u = (θ - lo) / (hi - lo)``: cut values
in GeV and b-tag scores in [0, 1] then move at comparable rates under one learning rate,
and the bounds are the box ``[0, 1]``, enforced by projection after every update
(``optax.projections.projection_box``).

Example:
    >>> import jax.numpy as jnp
    >>> from diffana.optimise import optimise
    >>> res = optimise(lambda u: ((u - 0.3) ** 2).sum(), jnp.array([0.9]), "adam",
    ...                {"learning_rate": 0.1}, steps=200, progress=False)
    >>> round(float(res.params[0]), 2)
    0.3
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from diffana.exceptions import ConfigError


class OptimisationResult(NamedTuple):
    """Where the optimiser ended and how it got there."""

    params: jax.Array  # unit-box coordinates of the last good step
    loss: float
    history: list[tuple[int, float, np.ndarray]]  # (step, loss, u) per evaluated point
    stopped: str  # "steps", "tolerance" or "non-finite: ..."
    first_call_seconds: float  # the first evaluation, compilation included


def make_optimiser(name: str, options: dict) -> optax.GradientTransformation:
    """``optax.<name>(**options)``, with a clear error for bad arguments."""
    factory = getattr(optax, name, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"optimiser.name: {name!r} is not an optax optimiser")
    try:
        return factory(**options)
    except TypeError as err:
        raise ConfigError(f"optimiser.options: {options!r} are not valid for optax.{name} ({err})") from None


def optimise(
    loss_and_grad: Callable,
    u0,
    name: str = "adam",
    options: dict | None = None,
    steps: int = 100,
    tolerance: float | None = None,
    progress: bool = True,
    on_step: Callable[[int, float, np.ndarray], None] | None = None,
    describe: Callable[[float], str] | None = None,
) -> OptimisationResult:
    """Minimise a loss over the unit box with an optax optimiser.

    Args:
        loss_and_grad: ``u -> (loss, grad)``, or a plain ``u -> loss`` (then differentiated
            with ``jax.value_and_grad``).
        u0: starting point in the unit box.
        name, options: the optax optimiser and its keyword arguments.
        steps: maximum number of updates.
        tolerance: stop when the loss changes by less than ``tolerance × max(1, |loss|)``.
        on_step: called with ``(step, loss, u)`` after each evaluation (for live history files).
        describe: formats the loss for the progress bar (e.g. as the objective).
    """
    u = jnp.clip(jnp.asarray(u0, dtype=jnp.float64), 0.0, 1.0)
    vg = loss_and_grad
    start = time.perf_counter()
    probe = vg(u)
    if not isinstance(probe, tuple):
        vg = jax.jit(jax.value_and_grad(loss_and_grad))
        start = time.perf_counter()
        probe = vg(u)
    jax.block_until_ready(probe)
    first_call_seconds = time.perf_counter() - start
    opt = make_optimiser(name, dict(options or {"learning_rate": 0.02}))
    state = opt.init(u)
    needs_value = "lbfgs" in name  # line-search optimisers want the value and a value_fn

    def _update(grad, state, u, loss):
        if needs_value:
            updates, state = opt.update(grad, state, u, value=loss, grad=grad,
                                        value_fn=lambda v: vg(v)[0])
        else:
            updates, state = opt.update(grad, state, u)
        return optax.projections.projection_box(optax.apply_updates(u, updates), 0.0, 1.0), state

    update = jax.jit(_update)  # one compiled optimiser update (line searches included)
    history: list[tuple[int, float, np.ndarray]] = []
    loss, grad = probe
    last_loss = math.inf
    stopped = "steps"
    best_u, best_loss = u, float(loss)
    describe = describe or (lambda v: f"{v:.6g}")
    with tqdm(total=steps, desc="optimising", disable=not progress, leave=False) as bar:
        for step in range(steps + 1):
            if step > 0:
                loss, grad = vg(u)
            loss_f = float(loss)
            bad = [i for i, g in enumerate(np.asarray(grad)) if not np.isfinite(g)]
            if not math.isfinite(loss_f) or bad:
                what = "objective" if not math.isfinite(loss_f) else f"gradient of parameter {bad[0]}"
                stopped = f"non-finite {what} at step {step}"
                break
            history.append((step, loss_f, np.asarray(u)))
            best_u, best_loss = u, loss_f
            if on_step is not None:
                on_step(step, loss_f, np.asarray(u))
            bar.set_postfix_str(f"objective {describe(loss_f)}")
            if tolerance is not None and abs(last_loss - loss_f) < tolerance * max(1.0, abs(loss_f)):
                stopped = "tolerance"
                break
            if step == steps:
                break
            last_loss = loss_f
            try:
                u, state = update(grad, state, u, loss)
            except jax.errors.JAXTypeError:
                # A loss that cannot be traced (the awkward engine) inside a line search.
                u, state = _update(grad, state, u, loss)
            bar.update(1)
    return OptimisationResult(best_u, best_loss, history, stopped, first_call_seconds)
