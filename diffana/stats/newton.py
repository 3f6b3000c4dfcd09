"""The bounded minimiser of the fits: a damped, projected Newton method in a box, written
for ``jax.lax.while_loop`` (it jit-compiles, and ``jax.vmap`` batches it), with the Hessian it
ends on returned for implicit differentiation (:mod:`diffana.stats.infer`).

Hand-written rather than taken from a library: optimistix minimises without bounds, jaxopt
(L-BFGS-B, projected gradient) is no longer maintained, and neither ends on the exact Hessian
that :func:`diffana.stats.infer.fit` reuses for its implicit derivatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["DAMPING", "SHORT_OF_BOUND", "projected_newton"]

#: A step that would cross a bound is also tried stopping short of it, this fraction of the
#: way from the bound to where it starts (see ``_step``).
SHORT_OF_BOUND = 0.1


def _step(objective, x, target, lower, upper):
    """The step to ``target`` projected into the box, or, where some parameter would cross
    its bound and it is lower, the same step with those parameters stopping short of their
    bounds (at ``SHORT_OF_BOUND`` of their distance from it): ``(x_new, objective(x_new))``.

    The projection alone can land a parameter on its bound where the likelihood rises
    steeply towards it (a ``staterror`` factor at ``1e-10`` with ``-n ln gamma`` in the main
    term): Newton then only doubles it per iteration, and the fit takes tens of iterations to
    return, or stops at its cap. The step that stops short is evaluated only where a
    parameter crosses.
    """
    projected = jnp.clip(target, lower, upper)
    below, above = target < lower, target > upper
    short = jnp.where(below, lower + SHORT_OF_BOUND * (x - lower),
                      jnp.where(above, upper - SHORT_OF_BOUND * (upper - x), target))
    f_projected = objective(projected)

    def shorter():
        f_short = objective(short)
        lower_there = f_short < f_projected
        return jnp.where(lower_there, short, projected), jnp.where(lower_there, f_short,
                                                                   f_projected)

    return jax.lax.cond(jnp.any(below | above), shorter, lambda: (projected, f_projected))


#: The first Levenberg-Marquardt damping of :func:`projected_newton` by default.
DAMPING = 1e-3


def _gradient_and_hessian(objective):
    """``x -> (gradient, Hessian)`` of ``objective`` by automatic differentiation, its
    reverse pass traced once (``jax.jacfwd`` of the gradient, the gradient as its aux: not
    ``jax.grad`` and ``jax.hessian``, which trace it twice)."""
    gradient = jax.grad(objective)

    def gradient_twice(y):  # the gradient, and the same array as jacfwd's aux
        g = gradient(y)
        return g, g

    def derivatives(x):
        matrix, g = jax.jacfwd(gradient_twice, has_aux=True)(x)
        return g, matrix

    return derivatives


def projected_newton(objective, x0, lower, upper, tolerance, max_iterations, noise=1e-13,
                     with_gradient=False, derivatives=None, damping=DAMPING):
    """Minimise ``objective`` in the box ``[lower, upper]`` by damped projected Newton.

    Each iteration computes the active set (parameters on a bound with the gradient pushing
    outwards), solves ``(H + lam * diag|H|) d = -g`` on the remaining ones, and projects
    ``x + d`` back into the box (or stops the parameters that would cross a bound short of
    it, where that is lower: ``_step``). A step is accepted when it does not raise the objective
    beyond its round-off (``1e-13 * max(1, |f|)``); otherwise the
    Levenberg-Marquardt damping ``lam`` grows tenfold, which turns the step into a short,
    scaled gradient step that the projection cannot spoil (``noise``: the relative round-off
    allowed). Accepted steps shrink ``lam``
    tenfold, so the iteration ends in pure Newton steps with quadratic convergence.

    ``damping`` is the first ``lam``: larger for a start far from the minimum (fewer steps
    rejected), smaller for one next to it (fewer damped steps).

    ``derivatives``, a function of ``x``, gives the gradient and Hessian of ``objective``
    (cheaper than automatic differentiation's, :meth:`diffana.stats.Model.twice_nll_derivatives`);
    without it, ``_gradient_and_hessian``'s (automatic differentiation).

    The loop stops right after the gradient and Hessian were refreshed, when the scaled
    projected gradient is below ``tolerance``, when ``max_iterations`` steps were tried, or
    when no step is accepted any more (``lam`` huge). The Hessian is computed at one place in
    the loop only (compile time), and it is returned: implicit differentiation reuses it.

    Returns:
        ``(x, f, hessian, active, n_iter, scaled_projected_gradient)`` at the solution, and
        with ``with_gradient`` the gradient there.
    """
    tiny = jnp.finfo(jnp.float64).tiny

    grad_and_hessian = derivatives or _gradient_and_hessian(objective)

    def active_set(x, g):  # a parameter whose box is a point is always held
        return ((x <= lower) & (g > 0.0)) | ((x >= upper) & (g < 0.0)) | (lower >= upper)

    def scaled_gradient(x, g, hessian):
        scale = jnp.sqrt(jnp.maximum(jnp.abs(jnp.diag(hessian)), tiny))
        return jnp.max(jnp.where(active_set(x, g), 0.0, jnp.abs(g) / scale), initial=0.0)

    n = x0.shape[0]
    x0 = jnp.clip(x0, lower, upper)
    state0 = dict(
        x=x0,
        f=objective(x0),
        g=jnp.zeros(n, dtype=jnp.float64),
        hessian=jnp.eye(n, dtype=jnp.float64),
        refresh=jnp.asarray(True),
        lam=jnp.asarray(damping, dtype=jnp.float64),
        n_iter=jnp.asarray(0),
        pgrad=jnp.asarray(jnp.inf, dtype=jnp.float64),
        stop=jnp.asarray(False),
    )

    def body(state):
        x, f, lam = state["x"], state["f"], state["lam"]
        g, hessian = jax.lax.cond(
            state["refresh"],
            lambda: grad_and_hessian(x),
            lambda: (state["g"], state["hessian"]),
        )
        pgrad = scaled_gradient(x, g, hessian)
        stop = (pgrad <= tolerance) | (state["n_iter"] >= max_iterations) | (lam >= 1e12)

        def newton_step():
            free = ~active_set(x, g)
            both_free = free[:, None] & free[None, :]
            diag = jnp.maximum(jnp.abs(jnp.diag(hessian)), 1e-12)
            system = (jnp.where(both_free, hessian, 0.0)
                      + jnp.diag(jnp.where(free, lam * diag, 1.0)))
            direction = jnp.linalg.solve(system, jnp.where(free, -g, 0.0))
            return _step(objective, x, x + direction, lower, upper)

        # the last pass (stop) only refreshed the gradient and Hessian: no step to try
        x_new, f_new = jax.lax.cond(stop, lambda: (x, f), newton_step)
        # Close to the minimum, the change of f drowns in its round-off; a step that does not
        # raise f beyond that is taken (Newton steps there only shrink the gradient).
        allowed = noise * jnp.maximum(1.0, jnp.abs(f))
        accept = ~stop & jnp.isfinite(f_new) & (f_new <= f + allowed)
        return dict(
            x=jnp.where(accept, x_new, x),
            f=jnp.where(accept, f_new, f),
            g=g,
            hessian=hessian,
            refresh=accept,
            lam=jnp.where(stop, lam, jnp.where(accept, jnp.maximum(lam * 0.1, 1e-12), lam * 10.0)),
            n_iter=state["n_iter"] + jnp.where(stop, 0, 1),
            pgrad=pgrad,
            stop=stop,
        )

    final = jax.lax.while_loop(lambda state: ~state["stop"], body, state0)
    active = active_set(final["x"], final["g"])
    out = final["x"], final["f"], final["hessian"], active, final["n_iter"], final["pgrad"]
    return (*out, final["g"]) if with_gradient else out
