"""The median expected ``CLs`` upper limit on the POI as a differentiable figure of merit.

:func:`expected_upper_limit` finds the limit by Newton's method and differentiates it
implicitly at its root (``jax.lax.custom_root``): the objective ``expected_upper_limit`` of a
configuration (``objective: {kind: expected_upper_limit, level: 0.05}``).

Example:
    >>> import jax
    >>> import pyhf
    >>> from diffana.stats import Model
    >>> spec = pyhf.simplemodels.uncorrelated_background([5.0, 10.0], [50.0, 20.0], [5.0, 4.0]).spec
    >>> model = Model(spec)
    >>> limit = jax.jit(expected_upper_limit, static_argnums=(0, 2))
    >>> print(f"{float(limit(model, model.templates(), 0.05)):.4f}")
    1.1509
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import scipy.special

from diffana.stats.infer import asimov_data, asimov_pars, fit
from diffana.stats.model import Model, Templates

__all__ = ["expected_upper_limit"]


def expected_upper_limit(model: Model, templates: Templates, level: float = 0.05,
                         max_iterations: int = 20) -> jax.Array:
    """Median expected ``CLs`` upper limit on the POI (``qtilde``, asymptotic formulae).

    The limit ``mu_up`` solves ``CLs_expected(mu_up) = level`` on the background-only Asimov
    data at the suggested nuisance values (as :func:`expected_cls`): ``CLs`` of the median
    is ``Phi(-sqrt(qtilde_A)) / Phi(0)``, so ``qtilde_A(mu_up) = ndtri(1 - level / 2)**2``
    with ``qtilde_A(mu) = -2 ln [L(mu, profiled) / L(0, nominal)]``. For such data it equals
    the median of ``pyhf.infer.intervals.upper_limits.upper_limit(data, model, scan=None)``.

    The root is found by Newton's method on ``sqrt(qtilde_A(mu))``, started from the
    linear estimate ``mu_0 = target / sqrt(qtilde_A(1))``; its derivatives come from
    implicit differentiation at the root (``jax.lax.custom_root``):
    ``d mu_up / d theta = -(d qtilde_A / d theta) / (d qtilde_A / d mu)``, with the fits'
    own implicit derivatives inside. Forward and reverse mode both work.

    Args:
        model: The statistical model (POI bounded below at 0).
        templates: The numbers of the spec.
        level: The ``CLs`` level (0.05: 95 % CL).
        max_iterations: Newton iterations allowed.

    Returns:
        The median expected upper limit, a float64 scalar.
    """
    target = float(scipy.special.ndtri(1.0 - 0.5 * level))  # level is static
    data = asimov_data(model, templates, 0.0)
    reference = -2.0 * model.logpdf(asimov_pars(model, 0.0), data, templates)

    def excess(mu):  # qtilde_A(mu) - target**2: zero at the limit
        conditional = fit(model, data, templates, fixed={model.poi_index: mu})
        return conditional.twice_nll - reference - target**2

    def solve(function, mu0):
        def sqrt_q_and_slope(mu):
            value, slope = jax.jvp(function, (mu,), (jnp.ones_like(mu),))
            q = jnp.maximum(value + target**2, 1e-300)
            return jnp.sqrt(q), slope / (2.0 * jnp.sqrt(q))

        first, _ = sqrt_q_and_slope(jnp.ones_like(mu0))
        mu = target / jnp.maximum(first, 1e-12)

        def body(state):
            mu, _, n = state
            h, slope = sqrt_q_and_slope(mu)
            step = (h - target) / jnp.where(slope > 0, slope, jnp.inf)
            new = jnp.maximum(mu - step, 0.1 * mu)
            return new, jnp.abs(new - mu), n + 1

        def more(state):
            mu, change, n = state
            return (change > 1e-12 * (1.0 + mu)) & (n < max_iterations)

        mu, _, _ = jax.lax.while_loop(more, body, (mu, jnp.asarray(jnp.inf), 0))
        return mu

    return jax.lax.custom_root(excess, jnp.asarray(1.0, dtype=jnp.float64), solve,
                               lambda g, y: y / g(jnp.ones_like(y)))
