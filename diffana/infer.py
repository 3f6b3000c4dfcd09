"""Fits, test statistics and figures of merit on a :class:`diffana.model.Model`.

Everything here is a pure JAX function of the templates (and data): jit-able with the model
as a static argument (or closed over), and differentiable with respect to the templates.

* :func:`fit` is a bounded maximum-likelihood fit (projected, damped Newton on the free
  parameters inside a ``lax.while_loop``). Its derivatives come from implicit
  differentiation of the optimality conditions (``jax.lax.custom_root``), not from
  unrolling the iterations.
* :func:`discovery_significance`, :func:`expected_cls` and :func:`poi_uncertainty` are the
  Asimov figures of merit: median discovery significance ``Z0``, median expected ``CLs``
  (``qtilde``, asymptotics, as ``pyhf.infer.hypotest(..., return_expected=True)``), and the
  expected POI uncertainty from the Fisher information.
* :func:`asimov_significance_closed_form` is the single-bin-per-term Cowan et al. formula with
  a relative background uncertainty, summed in quadrature over bins.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> from diffana.model import Model
    >>> spec = {"channels": [{"name": "SR", "samples": [
    ...     {"name": "signal", "data": [5.0, 10.0],
    ...      "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
    ...     {"name": "ttbar", "data": [50.0, 20.0],
    ...      "modifiers": [{"name": "bkg_unc", "type": "shapesys", "data": [5.0, 4.0]}]},
    ... ]}]}
    >>> model = Model(spec)
    >>> z0 = jax.jit(discovery_significance, static_argnums=0)
    >>> print(f"{float(z0(model, model.templates())):.4f}")
    1.8223
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffana.model import Model, Templates

__all__ = [
    "FitResult",
    "asimov_data",
    "asimov_pars",
    "asimov_significance_closed_form",
    "discovery_significance",
    "expected_cls",
    "fit",
    "poi_uncertainty",
    "profile_likelihood_ratio",
]

#: Newton iterations allowed in :func:`fit` (each one a Hessian of the free parameters).
MAX_ITERATIONS = 100
#: Stop when every free parameter's gradient, in units of its own curvature
#: (``|g_i| / sqrt(H_ii)`` of ``-2 ln L``, roughly "distance to the minimum in sigma"),
#: is below this.
TOLERANCE = 1e-10


class FitResult(NamedTuple):
    """Result of :func:`fit`.

    Attributes:
        bestfit: Best-fit values of all parameters (fixed ones at their fixed values).
        twice_nll: ``-2 ln L`` at the best fit.
        converged: ``True`` when the scaled projected gradient fell below ``1e3 * tolerance``
            (the loop itself runs to ``tolerance`` or until no step improves the fit).
        n_iter: Newton iterations used.
    """

    bestfit: jax.Array
    twice_nll: jax.Array
    converged: jax.Array
    n_iter: jax.Array


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` with a zero (not infinite or NaN) gradient at ``x <= 0``."""
    positive = x > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _fixed_mask(model: Model, fixed: dict[int, float] | None) -> np.ndarray:
    mask = np.array(model.suggested_fixed, dtype=bool)
    for index in fixed or {}:
        mask[int(index)] = True
    return mask


def _projected_newton(objective, x0, lower, upper, tolerance, max_iterations):
    """Minimise ``objective`` in the box ``[lower, upper]`` by damped projected Newton.

    Each iteration computes the active set (parameters on a bound with the gradient pushing
    outwards), solves ``(H + lam * diag|H|) d = -g`` on the remaining ones, and projects
    ``x + d`` back into the box. A step is accepted when it lowers the objective (or, inside
    the round-off of the objective, lowers the scaled projected gradient); otherwise the
    Levenberg-Marquardt damping ``lam`` grows tenfold, which turns the step into a short,
    scaled gradient step that a projection cannot spoil. Accepted steps shrink ``lam``
    tenfold, so the iteration ends in pure Newton steps with quadratic convergence.

    Returns ``(x, f, n_iter, scaled_projected_gradient)``.
    """
    n = x0.shape[0]
    tiny = jnp.finfo(jnp.float64).tiny

    def grad_and_hessian(x):
        gradient = jax.grad(objective)
        hessian, g = jax.jacfwd(lambda y: (gradient(y), gradient(y)), has_aux=True)(x)
        return g, hessian

    def active_set(x, g):
        return ((x <= lower) & (g > 0.0)) | ((x >= upper) & (g < 0.0))

    def scaled_gradient(x, g, hessian):
        scale = jnp.sqrt(jnp.maximum(jnp.abs(jnp.diag(hessian)), tiny))
        return jnp.max(jnp.where(active_set(x, g), 0.0, jnp.abs(g) / scale), initial=0.0)

    x0 = jnp.clip(x0, lower, upper)
    g0, h0 = grad_and_hessian(x0)
    f0 = objective(x0)
    state0 = (x0, f0, g0, h0, jnp.asarray(1e-3), jnp.asarray(0), scaled_gradient(x0, g0, h0))

    def keep_going(state):
        _, _, _, _, lam, iteration, pgrad = state
        return (iteration < max_iterations) & (pgrad > tolerance) & (lam < 1e12)

    def step(state):
        x, f, g, hessian, lam, iteration, pgrad = state
        free = ~active_set(x, g)
        both_free = free[:, None] & free[None, :]
        diag = jnp.maximum(jnp.abs(jnp.diag(hessian)), 1e-12)
        system = jnp.where(both_free, hessian, 0.0) + jnp.diag(
            jnp.where(free, lam * diag, 1.0)
        )
        direction = jnp.linalg.solve(system, jnp.where(free, -g, 0.0))
        x_new = jnp.clip(x + direction, lower, upper)
        f_new, g_new = jax.value_and_grad(objective)(x_new)
        pgrad_new = scaled_gradient(x_new, g_new, hessian)
        noise = 1e-13 * jnp.maximum(1.0, jnp.abs(f))
        accept = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new))
        accept = accept & ((f_new < f) | ((f_new <= f + noise) & (pgrad_new < pgrad)))

        def on_accept(_):
            g_acc, h_acc = grad_and_hessian(x_new)
            return (x_new, f_new, g_acc, h_acc, jnp.maximum(lam * 0.1, 1e-12),
                    scaled_gradient(x_new, g_acc, h_acc))

        def on_reject(_):
            return (x, f, g, hessian, lam * 10.0, pgrad)

        x, f, g, hessian, lam, pgrad = jax.lax.cond(accept, on_accept, on_reject, None)
        return (x, f, g, hessian, lam, iteration + 1, pgrad)

    x, f, _, _, _, n_iter, pgrad = jax.lax.while_loop(keep_going, step, state0)
    del n
    return x, f, n_iter, pgrad


def fit(
    model: Model,
    data: jax.Array,
    templates: Templates,
    *,
    fixed: dict[int, float] | None = None,
    init: jax.Array | None = None,
    tolerance: float = TOLERANCE,
    max_iterations: int = MAX_ITERATIONS,
) -> FitResult:
    """Maximum-likelihood fit within pyhf's suggested bounds.

    Minimises ``-2 ln L`` over the parameters that are neither fixed by pyhf
    (``model.suggested_fixed``) nor listed in ``fixed``, with a projected, damped Newton
    method (see ``_projected_newton``): a fixed iteration cap inside ``lax.while_loop``, no
    Python control flow on data, so it jit-compiles. A best fit on a bound (for instance
    ``mu = 0`` for background-like data) is handled by the active set: such parameters stay
    on the bound while the others are solved by Newton steps.

    Derivatives of ``bestfit`` (and of ``twice_nll``) with respect to ``data``,
    ``templates``, ``init`` and the ``fixed`` values come from implicit differentiation
    (``jax.lax.custom_root``) of the optimality conditions: ``d(-2 ln L)/dx_i = 0`` for free
    parameters inside the bounds, ``x_i = bound`` for those on an active bound (whose
    derivative is then zero). Forward and reverse mode are both supported; the solver's
    iterations are never differentiated.

    Args:
        model: The statistical model.
        data: Main data followed by auxiliary data, shape ``(n_bins + n_aux,)``.
        templates: The numbers of the spec (see :meth:`Model.templates`).
        fixed: ``{parameter index: value}`` for parameters held constant (in addition to
            pyhf's fixed ones). The indices are static; the values may be traced.
        init: Starting values of all parameters; defaults to ``model.suggested_init``.
            Parameters fixed by pyhf keep their ``init`` value.
        tolerance: Stop when ``max_i |g_i| / sqrt(H_ii) < tolerance`` over the free
            parameters not held on a bound (``g``, ``H``: gradient and Hessian of
            ``-2 ln L``).
        max_iterations: Iteration cap.

    Returns:
        A :class:`FitResult`.
    """
    fixed_mask = _fixed_mask(model, fixed)
    free_index = np.flatnonzero(~fixed_mask)
    base = jnp.asarray(model.suggested_init if init is None else init, dtype=jnp.float64)
    for index, value in (fixed or {}).items():
        base = base.at[int(index)].set(value)
    data = jnp.asarray(data, dtype=jnp.float64)
    lower = jnp.asarray(model.suggested_bounds[free_index, 0])
    upper = jnp.asarray(model.suggested_bounds[free_index, 1])

    def full_pars(x):
        return base.at[free_index].set(x)

    def twice_nll(x):
        return -2.0 * model.logpdf(full_pars(x), data, templates)

    if free_index.size == 0:
        value = twice_nll(jnp.zeros(0))
        return FitResult(base, value, jnp.asarray(True), jnp.asarray(0))

    def optimality(x):
        g = jax.grad(twice_nll)(x)
        on_lower = jax.lax.stop_gradient((x <= lower) & (g > 0.0))
        on_upper = jax.lax.stop_gradient((x >= upper) & (g < 0.0))
        bound = jnp.where(on_lower, lower, upper)
        return jnp.where(on_lower | on_upper, x - bound, g)

    def solve(_, x0):
        x, _, n_iter, pgrad = _projected_newton(
            twice_nll, x0, lower, upper, tolerance, max_iterations
        )
        # custom_root's auxiliary outputs must be floating point (they get float tangents).
        return x, (n_iter.astype(jnp.float64), pgrad)

    def tangent_solve(linear_map, rhs):
        jacobian = jax.jacfwd(linear_map)(rhs)
        return jnp.linalg.solve(jacobian, rhs)

    x_best, (n_iter, pgrad) = jax.lax.custom_root(
        optimality, base[free_index], solve, tangent_solve, has_aux=True
    )
    n_iter, pgrad = jax.lax.stop_gradient((n_iter, pgrad))
    n_iter = n_iter.astype(jnp.int32)
    return FitResult(
        bestfit=full_pars(x_best),
        twice_nll=twice_nll(x_best),
        converged=pgrad <= 1e3 * tolerance,
        n_iter=n_iter,
    )


def asimov_pars(model: Model, poi_value: float | jax.Array) -> jax.Array:
    """pyhf's suggested initial parameters with the POI set to ``poi_value``."""
    pars = jnp.asarray(model.suggested_init, dtype=jnp.float64)
    return pars.at[model.poi_index].set(poi_value)


def asimov_data(model: Model, templates: Templates, poi_value: float | jax.Array) -> jax.Array:
    """Asimov data (main and auxiliary) at ``poi_value`` and suggested nuisance values.

    Args:
        model: The statistical model.
        templates: The numbers of the spec.
        poi_value: Signal strength used to generate the data.

    Returns:
        Expected data, shape ``(n_bins + n_aux,)``.
    """
    return model.expected_data(asimov_pars(model, poi_value), templates)


def profile_likelihood_ratio(
    model: Model,
    data: jax.Array,
    templates: Templates,
    poi_value: float | jax.Array,
    unconditional_pars: jax.Array,
) -> jax.Array:
    """``-2 ln [L(poi_value, profiled) / L(unconditional_pars)]``, clipped at zero.

    The unconditional maximum is *not* fitted: ``unconditional_pars`` must be it (true for
    Asimov data at the parameters that generated it, which is how the objectives use this).
    """
    conditional = fit(model, data, templates, fixed={model.poi_index: poi_value})
    unconditional = -2.0 * model.logpdf(unconditional_pars, data, templates)
    return jnp.maximum(conditional.twice_nll - unconditional, 0.0)


def discovery_significance(model: Model, templates: Templates) -> jax.Array:
    """Median discovery significance ``Z0 = sqrt(q0)`` with profiled nuisance parameters.

    On the Asimov data for ``mu = 1`` the unconditional maximum is the generating point
    itself (every Poisson and constraint term is at its maximum), so only the conditional fit
    at ``mu = 0`` is run; ``q0`` is the same as ``pyhf.infer.test_statistics.q0`` on that
    data. The square root is safe: ``Z0 = 0`` with zero gradient when ``q0 <= 0``.

    Args:
        model: The statistical model (with a POI).
        templates: The numbers of the spec.

    Returns:
        ``Z0``, a float64 scalar.
    """
    data = asimov_data(model, templates, 1.0)
    q0 = profile_likelihood_ratio(model, data, templates, 0.0, asimov_pars(model, 1.0))
    return _safe_sqrt(q0)


def expected_cls(model: Model, templates: Templates, poi_value: float | jax.Array) -> jax.Array:
    """Median expected ``CLs`` at ``poi_value`` (``qtilde``, asymptotic formulae).

    Equal to ``pyhf.infer.hypotest(poi_value, data, pdf, test_stat="qtilde",
    return_expected=True)[1]`` for background-only Asimov ``data`` (``mu = 0``, suggested
    nuisances): there the background-only Asimov data pyhf regenerates are the data
    themselves, the free fit sits at ``mu_hat = 0`` (the generating point), and the median
    expected test statistic under the background-only hypothesis is 0, so
    ``CLs = Phi(-sqrt(qtilde_A)) / Phi(0) = 2 Phi(-sqrt(qtilde_A))`` with
    ``qtilde_A = -2 ln [L(poi_value, profiled) / L(0, nominal)]``.

    Args:
        model: The statistical model (POI bounded below at 0).
        templates: The numbers of the spec.
        poi_value: The tested signal strength.

    Returns:
        The expected ``CLs``, a float64 scalar.
    """
    data = asimov_data(model, templates, 0.0)
    qtilde = profile_likelihood_ratio(model, data, templates, poi_value, asimov_pars(model, 0.0))
    return 2.0 * jax.scipy.special.ndtr(-_safe_sqrt(qtilde))


def poi_uncertainty(model: Model, templates: Templates) -> jax.Array:
    """Expected uncertainty on the POI from the Fisher information at the Asimov point.

    ``sqrt([H^-1]_poi,poi)`` with ``H`` the Hessian of ``-ln L`` with respect to the free
    parameters (not fixed by pyhf), at ``mu = 1`` and suggested nuisances, on the Asimov data
    of that point. No fit is needed: the point is the maximum of its own Asimov likelihood.

    Args:
        model: The statistical model (with a POI).
        templates: The numbers of the spec.

    Returns:
        The expected POI uncertainty, a float64 scalar.
    """
    free_index = np.flatnonzero(~np.asarray(model.suggested_fixed))
    poi_position = int(np.flatnonzero(free_index == model.poi_index)[0])
    pars = asimov_pars(model, 1.0)
    data = asimov_data(model, templates, 1.0)

    def nll(x):
        return -model.logpdf(pars.at[free_index].set(x), data, templates)

    hessian = jax.hessian(nll)(pars[free_index])
    unit = jnp.zeros(free_index.size, dtype=jnp.float64).at[poi_position].set(1.0)
    variance = jnp.linalg.solve(hessian, unit)[poi_position]
    return _safe_sqrt(variance)


def asimov_significance_closed_form(
    s: jax.Array, b: jax.Array, rel_bkg_unc: float | jax.Array, floor: float = 0.0
) -> jax.Array:
    """Asimov discovery significance with a relative background uncertainty, per bin.

    Cowan, Cranmer, Gross, Vitells (arXiv:1007.1727) with an uncertainty ``sigma_b =
    rel_bkg_unc * b``; bins combined in quadrature::

        sb2 = (rel * b)**2
        term1 = (s + b) * log((s + b) * (b + sb2) / (b**2 + (s + b) * sb2))
        term2 = (b**2 / sb2) * log1p(sb2 * s / (b * (b + sb2)))
        Z = sqrt(sum(2 * (term1 - term2)))

    ``floor`` is *added* to every ``s`` and ``b`` first (the reference benchmark adds
    ``1e-3``), which keeps empty bins finite. Where ``sb2 == 0`` (``rel_bkg_unc = 0``) the
    formula is replaced by its limit ``2 ((s + b) log(1 + s / b) - s)``.

    Args:
        s: Expected signal per bin.
        b: Expected background per bin (must be > 0 after the floor).
        rel_bkg_unc: Relative background uncertainty (scalar or per bin).
        floor: Added to ``s`` and ``b``.

    Returns:
        ``Z``, a scalar; ``sqrt`` is safe at 0.
    """
    s = jnp.asarray(s, dtype=jnp.float64) + floor
    b = jnp.asarray(b, dtype=jnp.float64) + floor
    sb2 = (rel_bkg_unc * b) ** 2
    has_unc = sb2 > 0.0
    sb2_safe = jnp.where(has_unc, sb2, 1.0)
    term1 = (s + b) * jnp.log((s + b) * (b + sb2_safe) / (b * b + (s + b) * sb2_safe))
    term2 = (b * b / sb2_safe) * jnp.log1p(sb2_safe * s / (b * (b + sb2_safe)))
    z2_unc = 2.0 * (term1 - term2)
    z2_no_unc = 2.0 * ((s + b) * jnp.log1p(s / b) - s)
    z2 = jnp.where(has_unc, z2_unc, z2_no_unc)
    return _safe_sqrt(jnp.sum(z2))
