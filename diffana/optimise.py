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
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from diffana.config import optax_optimiser
from diffana.exceptions import ConfigError, ResumableError
from diffana.log import logger


class Resume(NamedTuple):
    """Where the loop continues: its state after the last completed update.

    Continuing from it gives bitwise the same steps as a loop that was never stopped.
    """

    step: int  # the next step to evaluate
    u: np.ndarray  # where to evaluate it (unit box)
    state: list[np.ndarray] | None  # the optax state's leaves; None before the first update
    history: list[tuple[int, float, np.ndarray]]  # (step, loss, u) of the steps before ``step``


class OptimisationResult(NamedTuple):
    """Where the optimiser ended and how it got there."""

    params: jax.Array  # unit-box coordinates of the last good step
    loss: float
    history: list[tuple[int, float, np.ndarray]]  # (step, loss, u) per evaluated point
    stopped: str  # "steps", "tolerance" or "non-finite <objective or gradient...> at step k"
    first_call_seconds: float  # the first evaluation, compilation included
    resume: Resume | None = None  # where a stopped loop would continue (the last update's)
    non_finite_u: np.ndarray | None = None  # where the non-finite value appeared, if one did
    non_finite_param: int | None = None  # the first parameter whose derivative was non-finite
    first_gradient: np.ndarray | None = None  # the gradient at step 0 (None when resumed later)
    gradient: np.ndarray | None = None  # the gradient at ``params`` (None: no good step)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``resume`` is where to continue from (if known)."""

    def __init__(self, resume: Resume | None = None, signum: int = signal.SIGINT,
                 message: str = "interrupted"):
        super().__init__(message)
        self.resume, self.signum, self.message = resume, int(signum), message


def make_optimiser(name: str, options: dict) -> optax.GradientTransformation:
    """``optax.<name>(**options)``, with a clear error for bad arguments."""
    factory = optax_optimiser(name)
    if factory is None:
        raise ConfigError(f"optimiser.name: {name!r} is not an optax optimiser")
    try:
        return factory(**options)
    except TypeError as err:
        raise ConfigError(f"optimiser.options: {options!r} are not valid for optax.{name} "
                          f"({err})") from None


def grouped(transforms: dict[str, optax.GradientTransformation],
            slices: dict[str, slice]) -> optax.GradientTransformation:
    """One optimiser per part of a flat parameter vector (``optax.multi_transform`` on the
    parts as a mapping, labelled by their names).

    ``slices`` are the parts, contiguous and in order (``ParameterSpace.group_slices``);
    ``transforms`` has an optimiser for each.

    >>> import jax.numpy as jnp
    >>> opt = grouped({"cuts": optax.sgd(1.0), "nn": optax.sgd(0.1)},
    ...               {"cuts": slice(0, 1), "nn": slice(1, 3)})
    >>> u = jnp.zeros(3)
    >>> updates, _ = opt.update(jnp.ones(3), opt.init(u), u)
    >>> [round(float(x), 3) for x in updates]
    [-1.0, -0.1, -0.1]
    """
    inner = optax.multi_transform(transforms, {name: name for name in slices})

    def parts(v):
        return None if v is None else {name: v[where] for name, where in slices.items()}

    def init(u):
        return inner.init(parts(u))

    def update(updates, state, params=None):
        out, state = inner.update(parts(updates), state, parts(params))
        return jnp.concatenate([out[name] for name in slices]), state

    return optax.GradientTransformation(init, update)


def group_settings(slices: dict[str, slice], optimiser) -> dict | None:
    """``optimise(groups=...)`` of a configuration's ``optimiser`` block: each part of ``u``
    (``ParameterSpace.group_slices``) with its group's optimiser, or the block's own (None:
    no ``groups``, one optimiser for all)."""
    if not optimiser.groups:
        return None
    chosen = {g: optimiser.groups.get(g, optimiser) for g in slices}
    return {g: (where, chosen[g].name, chosen[g].options) for g, where in slices.items()}


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
    names: list[str] | None = None,
    resume: Resume | None = None,
    on_first_gradient: Callable | None = None,
    box: tuple | None = None,
    groups: dict[str, tuple[slice, str, dict]] | None = None,
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
        names: the parameters' names, for messages (default: their indices).
        resume: continue an interrupted loop from here (``u0`` is then ignored).
        on_first_gradient: called with the gradient at step 0 as soon as it is known (not
            on a resumed loop), e.g. to warn of parameters it does not move.
        box: ``(lower, upper)`` of each coordinate (default: the unit box; ``±inf``: a
            network's weights, unbounded; see ``ParameterSpace.unit_box``).
        groups: ``{group: (where in u, optax name, options)}``: each part of ``u`` (every
            part, in order) with the optimiser of its own (``name``, ``options``: its
            default) — :func:`grouped`. The checkpoint holds every group's state.

    Raises:
        Interrupted: on ``KeyboardInterrupt`` (SIGINT, or SIGTERM turned into one), carrying
            the :class:`Resume` of the last completed update.
    """
    lower, upper = (0.0, 1.0) if box is None else (jnp.asarray(box[0]), jnp.asarray(box[1]))
    if resume is not None:
        u = jnp.asarray(resume.u, dtype=jnp.float64)
    else:
        u = jnp.clip(jnp.asarray(u0, dtype=jnp.float64), lower, upper)
    first = resume.step if resume is not None else 0
    history: list[tuple[int, float, np.ndarray]] = list(resume.history) if resume else []
    # The loop's state after its last completed update, (next step, u, optimiser state or its
    # leaves, history length): replaced as a whole, never mutated, so that an interrupt
    # anywhere finds it whole.
    mark = (first, u, resume.state if resume is not None else None, len(history))
    try:
        logger.info("compiling the objective and its gradient (the first step) ...")
        vg, (loss, grad), first_call_seconds = _first_call(loss_and_grad, u)
        logger.info("compiled and evaluated the first step: %.1f s", first_call_seconds)
        first_gradient = np.asarray(grad) if first == 0 else None
        if first_gradient is not None and on_first_gradient is not None:
            on_first_gradient(first_gradient)
        opt = make_optimiser(name, dict(options or {"learning_rate": 0.02}))
        if groups:
            opt = grouped({g: make_optimiser(n, dict(o or {"learning_rate": 0.02}))
                           for g, (_, n, o) in groups.items()},
                          {g: where for g, (where, _, _) in groups.items()})
        state = opt.init(u)
        if resume is not None and resume.state is not None:
            state = _restore_state(state, resume.state, f"optax.{name}({options or ''})")
        needs_value = "lbfgs" in name  # line-search optimisers want the value and a value_fn
        if needs_value and groups:
            raise ConfigError(f"optimiser.groups: optax.{name} searches a line over every "
                              "parameter at once; use one optimiser, or a first-order one")

        def _update(grad, state, u, loss):
            if needs_value:
                updates, state = opt.update(grad, state, u, value=loss, grad=grad,
                                            value_fn=lambda v: vg(v)[0])
            else:
                updates, state = opt.update(grad, state, u)
            return (optax.projections.projection_box(optax.apply_updates(u, updates), lower,
                                                     upper), state)

        update = jax.jit(_update)  # one compiled optimiser update (line searches included)
        last_loss = history[-1][1] if history else math.inf
        stopped = "steps"
        non_finite_u = non_finite_param = None
        best_u = jnp.asarray(history[-1][2]) if history else u
        best_loss = history[-1][1] if history else float(loss)
        best_grad = None
        describe = describe or (lambda v: f"{v:.6g}")
        with tqdm(total=steps, initial=min(first, steps), desc="optimising",
                  disable=not progress, leave=False) as bar:
            for step in range(first, steps + 1):
                if step > first:
                    loss, grad = vg(u)
                loss_f = float(loss)
                bad = [i for i, g in enumerate(np.asarray(grad)) if not np.isfinite(g)]
                if not math.isfinite(loss_f) or bad:
                    if not math.isfinite(loss_f):
                        what = "objective"
                    else:
                        non_finite_param = bad[0]
                        what = f"gradient of parameter {names[bad[0]] if names else bad[0]}"
                    stopped = f"non-finite {what} at step {step}"
                    non_finite_u = np.asarray(u)
                    break
                history.append((step, loss_f, np.asarray(u)))
                best_u, best_loss, best_grad = u, loss_f, grad
                if on_step is not None:
                    on_step(step, loss_f, np.asarray(u))
                bar.set_postfix_str(f"objective {describe(loss_f)}")
                if (tolerance is not None
                        and abs(last_loss - loss_f) < tolerance * max(1.0, abs(loss_f))):
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
                mark = (step + 1, u, state, len(history))
                bar.update(1)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        raise Interrupted(_resume_at(mark, history), signum) from None
    except ResumableError as err:  # a cause outside the run: where to continue from
        err.resume = _resume_at(mark, history)
        raise
    return OptimisationResult(best_u, best_loss, history, stopped, first_call_seconds,
                              _resume_at(mark, history), non_finite_u, non_finite_param,
                              first_gradient,
                              None if best_grad is None else np.asarray(best_grad))


def _restore_state(template, leaves: list, what: str):
    """The optimiser state with ``template``'s structure and the checkpoint's ``leaves``."""
    expected = [(np.shape(a), np.asarray(a).dtype) for a in jax.tree_util.tree_leaves(template)]
    if expected != [(np.shape(a), np.asarray(a).dtype) for a in leaves]:
        raise ConfigError(f"optimiser: the checkpoint's optimiser state does not fit {what}")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                        [jnp.asarray(a) for a in leaves])


def _first_call(loss_and_grad: Callable, u) -> tuple[Callable, tuple, float]:
    """``(value_and_grad, its value at u, seconds)``: the first call, compilation included."""
    vg = loss_and_grad
    start = time.perf_counter()
    probe = vg(u)
    if not isinstance(probe, tuple):
        vg = jax.jit(jax.value_and_grad(loss_and_grad))
        start = time.perf_counter()
        probe = vg(u)
    jax.block_until_ready(probe)
    return vg, probe, time.perf_counter() - start


def _resume_at(mark: tuple, history: list) -> Resume:
    step, u, state, n = mark
    leaves = None if state is None else [np.asarray(a) for a in jax.tree_util.tree_leaves(state)]
    return Resume(step, np.asarray(u), leaves, history[:n])
