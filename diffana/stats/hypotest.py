"""Hypothesis tests a physicist quotes: CLs with its expected band, upper limits, the
discovery significance, impacts (ranking) and likelihood scans, as pyhf and cabinetry compute
them, on a :class:`~diffana.stats.Model`.

Everything is asymptotic (Cowan, Cranmer, Gross, Vitells, arXiv:1007.1727) with pyhf's
conventions:

* ``CLs`` uses ``qtilde`` and the Asimov data of the background-only hypothesis, with nuisance
  parameters from the fit to the observed data at ``POI = 0``; the expected band is at the
  background-only test statistic ``n = +2, +1, 0, -1, -2`` (``[-2σ, ..., +2σ]`` of ``CLs``),
  as ``pyhf.infer.hypotest(..., test_stat="qtilde", return_expected_set=True)``.
* the significance uses ``q0``; its expected value the Asimov data at ``POI = 1`` with nuisance
  parameters from the fit to the observed data at ``POI = 1``: ``Z = sqrt(q0)``.
* upper limits solve ``CLs(mu) = level`` (``pyhf.infer.intervals.upper_limits.upper_limit``
  with ``scan=None``); here by a safeguarded Newton iteration in ``mu`` whose slope comes from
  the fits themselves (``d qtilde / d mu`` is the POI's gradient of ``-2 ln L`` at the fit
  with the POI fixed), all six limits at once. The expected limits only need the Asimov fits:
  ``CLs_n(mu) = level`` is ``sqrt(qtilde_A(mu)) = target_n``.
* impacts (:mod:`diffana.stats.ranking`) are cabinetry's (``cabinetry.fit.ranking``): the
  POI's shift when a nuisance parameter is held at its best fit ± its pre-fit (constraint
  width) and post-fit (Hessian) uncertainty; sorted by the larger post-fit impact.

All fits go through one compiled function, :class:`Fits` (the box fit of
:func:`~diffana.stats.infer.fit_in_box`, batched with ``jax.vmap``), started warm.

Example:
    >>> import pyhf
    >>> from diffana.stats import Model
    >>> spec = pyhf.simplemodels.uncorrelated_background([5.0, 10.0], [50.0, 20.0], [5.0, 4.0]).spec
    >>> model = Model(spec)
    >>> fits = Fits(model, model.templates())
    >>> data = np.array([52.0, 24.0, *model.pyhf_model.config.auxdata])
    >>> result = hypotest(fits, data, 1.0)
    >>> print(f"{result.cls_observed:.4f}")
    0.2153
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri

from diffana.exported import persistent
from diffana.stats.infer import FitResult, fit_in_box
from diffana.stats.model import Model, Templates
from diffana.stats.newton import DAMPING

__all__ = [
    "BAND_SIGMAS",
    "COLD",
    "Fits",
    "Hypotest",
    "IMPACT",
    "WARM",
    "cls_values",
    "hypotest",
    "prefit_uncertainties",
    "significance",
    "upper_limits",
]

#: The background-only test statistics of the expected band, in pyhf's order: ``n = +2``
#: gives the lowest ``CLs`` (the ``-2σ`` entry of ``[-2σ, -1σ, median, +1σ, +2σ]``).
BAND_SIGMAS = (2.0, 1.0, 0.0, -1.0, -2.0)

#: The first damping of a fit's Newton steps (:func:`~diffana.stats.newton.projected_newton`):
#: ``COLD`` for a start away from the minimum (pyhf's init, another hypothesis's best fit),
#: ``WARM`` for one predicted from the neighbouring points of a scan, ``IMPACT`` for the
#: impacts' fits. On the AGC, against 1e-3 for all: the fit 14 -> 12 Newton iterations, the
#: CLs band 114 -> 84, the upper limits 665 -> 659, the scan 51 -> 45. The impacts keep 1e-3:
#: with 1e-4 one of them (me_variation held 1 below its best fit) ends in a local minimum of
#: -2 ln L 2.3 above the one it finds now, its impact -0.21 instead of -0.32.
COLD, WARM, IMPACT = 1e-2, 1e-4, DAMPING


class FitBatch(NamedTuple):
    """Results of :meth:`Fits.run`, one row per fit (NumPy arrays)."""

    bestfit: np.ndarray
    twice_nll: np.ndarray
    converged: np.ndarray
    hessian: np.ndarray
    poi_gradient: np.ndarray  # d(-2 ln L)/d(POI) at the best fit
    expected: np.ndarray  # expected main and auxiliary data at the best fit (Asimov data)
    n_iter: np.ndarray  # Newton iterations taken


def _one(model: Model, templates: Templates, data, init, lower, upper, damping):
    """One box fit: its result, and the Hessian, the POI's gradient and the expected data at
    the best fit."""
    result, hessian, gradient = fit_in_box(model, data, templates, init, lower, upper,
                                           damping=damping)
    poi = model.poi_index if model.poi_index is not None else 0
    return result, hessian, gradient[poi], model.expected_data(result.bestfit, templates)


def _batched(model: Model, templates: Templates, data, init, lower, upper, damping):
    return jax.vmap(lambda *row: _one(model, templates, *row))(data, init, lower, upper,
                                                               damping)


# One function compiled per model: the fit, which also gives the Asimov data at its best fit
# and (in a box that is a point) -2 ln L at given parameters. Batched on accelerators, where
# batching pays; a batch of one is not vmapped (that traces in half the time). Fits binds the
# model and its templates once (Persistent.bind).
# what the fits return, serialisable (kept across runs, diffana.exported)
jax.export.register_namedtuple_serialization(FitResult, serialized_name="diffana.FitResult")
_jit_one = persistent(jax.jit(_one, static_argnums=0), "box_fit", (0,))
_jit_batched = persistent(jax.jit(_batched, static_argnums=0), "box_fits", (0,))


class Fits:
    """Box fits of one model and its templates, compiled once, run in batches.

    Every fit of this module is a fit in a box (:func:`~diffana.stats.infer.fit_in_box`):
    a parameter held at ``v`` has the box ``[v, v]``. One compiled function of a fixed batch
    size serves them all; shorter batches are padded. On a CPU the batch is 1 (a Newton
    step is already vectorised over the parameters, so batching buys nothing there and
    padding costs); on an accelerator it is 32.

    Args:
        model: The statistical model.
        templates: Its numbers.
        batch: Fits per compiled call (default: 1 on CPU, 32 otherwise).

    Attributes:
        model, templates, batch: As given.
        lower, upper: pyhf's bounds, with pyhf's fixed parameters held at their inits.
        init: pyhf's suggested initial values.
        free: Indices of the parameters pyhf does not fix.
    """

    def __init__(self, model: Model, templates: Templates, batch: int | None = None):
        self.model, self.templates = model, templates
        self._one = _jit_one.bind(model, templates)
        self._batched = _jit_batched.bind(model, templates)
        self.batch = batch or (1 if jax.default_backend() == "cpu" else 32)
        fixed = np.asarray(model.suggested_fixed, dtype=bool)
        self.init = np.asarray(model.suggested_init, dtype=np.float64)
        bounds = np.asarray(model.suggested_bounds, dtype=np.float64)
        self.lower = np.where(fixed, self.init, bounds[:, 0])
        self.upper = np.where(fixed, self.init, bounds[:, 1])
        self.free = np.flatnonzero(~fixed)

    def run(self, data: np.ndarray, init: np.ndarray, lower: np.ndarray,
            upper: np.ndarray, damping: float = COLD) -> FitBatch:
        """Fits of ``data[k]`` from ``init[k]`` in the box ``[lower[k], upper[k]]``.

        Args:
            data: Shape ``(k, n_bins + n_aux)`` (or one row, broadcast to every fit).
            init, lower, upper: Shape ``(k, n_pars)``.
            damping: :data:`COLD`, :data:`WARM` or :data:`IMPACT` (the first damping of
                Newton's steps).

        Returns:
            A :class:`FitBatch` of ``k`` rows.
        """
        init, lower, upper = (np.atleast_2d(np.asarray(x, dtype=np.float64))
                              for x in (init, lower, upper))
        k = init.shape[0]
        data = np.broadcast_to(np.atleast_2d(np.asarray(data, dtype=np.float64)),
                               (k, self.model.n_bins + self.model.n_aux))
        parts = []
        first_damping = np.float64(damping)  # an array, not a Python float: compiled once
        if self.batch == 1:
            for row in zip(data, init, lower, upper, strict=True):
                result, *more = self._one(*row, first_damping)
                parts.append([np.asarray(x)[None] for x in (
                    result.bestfit, result.twice_nll, result.converged, *more, result.n_iter)])
            return FitBatch(*(np.concatenate(column) for column in zip(*parts, strict=True)))
        for start in range(0, k, self.batch):
            rows = [x[start:start + self.batch] for x in (data, init, lower, upper)]
            n = rows[0].shape[0]
            if n < self.batch:  # pad with copies of the last fit
                rows = [np.concatenate([x, np.repeat(x[-1:], self.batch - n, axis=0)])
                        for x in rows]
            result, *more = self._batched(*rows, np.full(self.batch, first_damping))
            parts.append([np.asarray(x)[:n] for x in (result.bestfit, result.twice_nll,
                                                       result.converged, *more, result.n_iter)])
        return FitBatch(*(np.concatenate(column) for column in zip(*parts, strict=True)))

    def box(self, index: int | None = None, value: float | None = None):
        """``(lower, upper)`` with parameter ``index`` held at ``value`` (``None``: free)."""
        lower, upper = self.lower.copy(), self.upper.copy()
        if index is not None:
            lower[index] = upper[index] = value
        return lower, upper

    def fixed_poi(self, data: np.ndarray, poi_values, init: np.ndarray | None = None,
                  damping: float = COLD) -> FitBatch:
        """Fits of ``data`` (one row or one per value) with the POI held at each value."""
        poi_values = np.atleast_1d(np.asarray(poi_values, dtype=np.float64))
        k, poi = poi_values.size, self.model.poi_index
        init = np.broadcast_to(self.init if init is None else init, (k, self.init.size)).copy()
        lower = np.repeat(self.lower[None], k, axis=0)
        upper = np.repeat(self.upper[None], k, axis=0)
        lower[:, poi] = upper[:, poi] = init[:, poi] = poi_values
        return self.run(data, init, lower, upper, damping)

    def profile(self, data: np.ndarray, poi_values, start: np.ndarray) -> FitBatch:
        """Fits of ``data`` with the POI held at each of ``poi_values`` (a profile scan).

        With a batch of one (CPU), the values are walked outwards from ``start``'s POI, each
        fit started from the previous ones extrapolated linearly to its value (a predictor
        step), so each needs few Newton iterations; otherwise one batch from ``start``.

        Args:
            data: Main and auxiliary data (one row).
            poi_values: The POI values.
            start: Parameters to start from (the best fit).

        Returns:
            A :class:`FitBatch` in the order of ``poi_values``.
        """
        values = np.atleast_1d(np.asarray(poi_values, dtype=np.float64))
        if self.batch > 1:
            return self.fixed_poi(data, values, init=start, damping=WARM)
        poi = self.model.poi_index
        rows: list = [None] * values.size
        for order in (np.flatnonzero(values >= start[poi]),
                      np.flatnonzero(values < start[poi])[::-1]):
            order = order[np.argsort(np.abs(values[order] - start[poi]), kind="stable")]
            path = [(float(start[poi]), np.asarray(start, dtype=np.float64))]
            for i in order:
                init = path[-1][1]
                if len(path) > 1:  # linear predictor from the last two solutions
                    (v0, x0), (v1, x1) = path[-2], path[-1]
                    if v1 != v0:
                        init = x1 + (x1 - x0) * (values[i] - v1) / (v1 - v0)
                        init = np.clip(init, self.lower, self.upper)
                result = self.fixed_poi(data, values[i], init=init, damping=WARM)
                rows[i] = result
                path.append((float(values[i]), result.bestfit[0]))
        return FitBatch(*(np.concatenate(column) for column in zip(*rows, strict=True)))

    def twice_nll(self, pars: np.ndarray, data: np.ndarray) -> float:
        """``-2 ln L(pars)`` for ``data`` (the fit in the box that is the point ``pars``)."""
        return float(self.run(data, pars, pars, pars).twice_nll[0])


def prefit_uncertainties(model: Model) -> np.ndarray:
    """Pre-fit uncertainty per parameter, as ``cabinetry.model_utils.prefit_uncertainties``.

    The constraint width (Gaussian ``sigma``; ``1/sqrt(tau)`` for shapesys) of constrained
    parameters, 0 for unconstrained (normfactor, shapefactor) and fixed ones.
    """
    config = model.pyhf_model.config
    out = []
    for name in config.par_order:
        param_set = config.param_set(name)
        if param_set.constrained:
            out += [0.0 if fixed else float(width)
                    for width, fixed in zip(param_set.width(), param_set.suggested_fixed,
                                            strict=True)]
        else:
            out += [0.0] * param_set.n_parameters
    return np.asarray(out, dtype=np.float64)


# --- CLs from the test statistics ------------------------------------------------------------


def cls_values(qtilde: float, qtilde_asimov: float) -> tuple[float, np.ndarray]:
    """Observed ``CLs`` and the expected band from ``qtilde`` and its Asimov value.

    pyhf's ``AsymptoticCalculator`` (normal base distribution): with ``s = sqrt(qtilde)`` and
    ``a = sqrt(qtilde_A)``, the test statistic is ``s - a`` if ``s <= a`` and
    ``(qtilde - qtilde_A) / (2 a)`` otherwise; ``CLs = Phi(-(t + a)) / Phi(-t)``. The
    expected values take ``t = n`` for ``n`` in :data:`BAND_SIGMAS`.

    Returns:
        ``(cls_observed, cls_expected)`` with ``cls_expected`` ordered ``[-2σ, ..., +2σ]``.
    """
    s, a = np.sqrt(max(qtilde, 0.0)), np.sqrt(max(qtilde_asimov, 0.0))
    t = s - a if s <= a else (qtilde - qtilde_asimov) / (2.0 * a)
    observed = float(ndtr(-(t + a)) / ndtr(-t))
    n = np.asarray(BAND_SIGMAS)
    return observed, ndtr(-(n + a)) / ndtr(-n)


def _log_cls_and_slope(q: float, q_a: float, dq: float, dq_a: float) -> tuple[float, float]:
    """``log CLs_observed`` and its derivative along ``(dq, dq_a)`` (for Newton).

    With ``s = sqrt(q)``, ``a = sqrt(q_a)``: ``log CLs = log Phi(-(t + a)) - log Phi(-t)``
    (:func:`cls_values`), differentiated by hand (NumPy: nothing to compile), with
    ``d log Phi(x) / dx = phi(x) / Phi(x)``.
    """
    s, a = np.sqrt(max(q, 1e-300)), np.sqrt(max(q_a, 1e-300))
    ds = dq / (2.0 * s) if q > 1e-300 else 0.0
    da = dq_a / (2.0 * a) if q_a > 1e-300 else 0.0
    if s <= a:
        t, dt = s - a, ds - da
    else:
        t = (q - q_a) / (2.0 * a)
        dt = (dq - dq_a) / (2.0 * a) - t * da / a

    def ratio(x):  # phi(x) / Phi(x), without overflow far in the tail
        return np.exp(-0.5 * x * x - log_ndtr(x)) / np.sqrt(2.0 * np.pi)

    value = log_ndtr(-(t + a)) - log_ndtr(-t)
    return float(value), float(-(dt + da) * ratio(-(t + a)) + dt * ratio(-t))


# --- the tests ---------------------------------------------------------------------------------


class Hypotest(NamedTuple):
    """``CLs`` at one POI value.

    Attributes:
        poi_value: The tested POI value.
        cls_observed: Observed ``CLs``.
        cls_expected: Expected ``CLs``, ``[-2σ, -1σ, median, +1σ, +2σ]``.
        qtilde: The observed test statistic.
        qtilde_asimov: The test statistic on the background-only Asimov data.
    """

    poi_value: float
    cls_observed: float
    cls_expected: np.ndarray
    qtilde: float
    qtilde_asimov: float


class _Reference(NamedTuple):
    """The fits every test starts from."""

    free: FitBatch  # the free fit to the data (one row)
    background: FitBatch  # the fit to the data at POI = 0
    asimov_data: np.ndarray  # background-only Asimov data (nuisances of `background`)
    asimov_twice_nll: float  # -2 ln L of the Asimov data at its own generating point


def reference(fits: Fits, data: np.ndarray, free: FitBatch | None = None) -> _Reference:
    """The free fit, the background-only fit and the background-only Asimov data.

    Args:
        fits: The compiled fits.
        data: Observed main and auxiliary data.
        free: The free fit, when it was already done.
    """
    if free is None:
        free = fits.run(data, fits.init, fits.lower, fits.upper)
    background = fits.fixed_poi(data, 0.0, init=free.bestfit[0])
    asimov = background.expected[0]
    # The Asimov data's own maximum is its generating point (pyhf fits it; same minimum).
    return _Reference(free, background, asimov, fits.twice_nll(background.bestfit[0], asimov))


def _qtilde(fixed: FitBatch, free_twice_nll: float, free_poi: float, poi_value: np.ndarray):
    """``qtilde`` (0 where the free POI lies above the tested value) and its slope in mu."""
    q = np.maximum(fixed.twice_nll - free_twice_nll, 0.0)
    above = free_poi > poi_value
    q = np.where(above, 0.0, q)
    slope = np.where(above | (q <= 0.0), 0.0, fixed.poi_gradient)
    return q, slope


def hypotest(fits: Fits, data: np.ndarray, poi_value: float,
             ref: _Reference | None = None) -> Hypotest:
    """``CLs`` at ``poi_value`` with its expected band, as pyhf's ``hypotest`` (``qtilde``).

    Args:
        fits: The compiled fits.
        data: Observed main and auxiliary data.
        poi_value: The tested POI value.
        ref: The result of :func:`reference` for ``data`` (computed when ``None``).

    Returns:
        A :class:`Hypotest`.
    """
    ref = reference(fits, data) if ref is None else ref
    poi = fits.model.poi_index
    inits = np.stack([ref.free.bestfit[0], ref.background.bestfit[0]])
    fixed = fits.fixed_poi(np.stack([data, ref.asimov_data]), [poi_value, poi_value], inits)
    q, _ = _qtilde(fixed, ref.free.twice_nll[0], ref.free.bestfit[0, poi], poi_value)
    q_a = max(float(fixed.twice_nll[1] - ref.asimov_twice_nll), 0.0)
    observed, expected = cls_values(float(q[0]), q_a)
    return Hypotest(float(poi_value), observed, expected, float(q[0]), q_a)


def cls_scan(fits: Fits, data: np.ndarray, poi_values: np.ndarray, ref: _Reference
             ) -> tuple[np.ndarray, np.ndarray]:
    """Observed ``CLs`` and the expected band along ``poi_values`` (warm-started fits).

    Returns:
        ``(observed (k,), expected (k, 5))``.
    """
    poi = fits.model.poi_index
    observed, expected = [], []
    inits = np.stack([ref.free.bestfit[0], ref.background.bestfit[0]])
    for value in np.asarray(poi_values, dtype=np.float64):
        fixed = fits.fixed_poi(np.stack([data, ref.asimov_data]), [value, value], inits)
        inits = fixed.bestfit
        q, _ = _qtilde(fixed, ref.free.twice_nll[0], ref.free.bestfit[0, poi], value)
        obs, exp = cls_values(float(q[0]), float(fixed.twice_nll[1] - ref.asimov_twice_nll))
        observed.append(obs)
        expected.append(exp)
    return np.asarray(observed), np.asarray(expected)


def upper_limits(fits: Fits, data: np.ndarray, level: float = 0.05,
                 ref: _Reference | None = None, rtol: float = 1e-10,
                 max_iterations: int = 60) -> tuple[float, np.ndarray, bool]:
    """Observed and expected upper limits on the POI: ``CLs(mu) = level``.

    The six roots are found together by a safeguarded Newton iteration in ``mu`` (a bracket
    ``[lo, hi]`` is kept for each; a step that leaves it is replaced by bisection, or by
    doubling while no upper end is known). Each iteration is one batch of fits with the POI
    held: the data and the Asimov data at the observed limit's current value, and the Asimov
    data at each expected limit's. Each fit starts from the previous one of its root.

    Args:
        fits: The compiled fits.
        data: Observed main and auxiliary data.
        level: The CLs level (0.05 for 95 % CL).
        ref: The result of :func:`reference` for ``data``.
        rtol: Stop when every step is below ``rtol * (1 + mu)``.
        max_iterations: Iteration cap.

    Returns:
        ``(observed, expected [-2σ, ..., +2σ], converged)``.
    """
    ref = reference(fits, data) if ref is None else ref
    poi = fits.model.poi_index
    mu_hat, free_nll = ref.free.bestfit[0, poi], ref.free.twice_nll[0]
    n = np.asarray(BAND_SIGMAS)
    target = -ndtri(level * ndtr(-n)) - n  # sqrt(qtilde_A) at each expected limit

    # A first scale: sigma_A from one Asimov fit, sqrt(qtilde_A(mu)) ~ mu / sigma_A.
    mu0 = max(float(fits.upper[poi]) * 0.1, 1e-3) if np.isfinite(fits.upper[poi]) else 1.0
    probe = fits.fixed_poi(ref.asimov_data, mu0, init=ref.background.bestfit[0])
    sigma = mu0 / max(np.sqrt(max(probe.twice_nll[0] - ref.asimov_twice_nll, 1e-300)), 1e-300)
    x = np.concatenate([[max(mu_hat, 0.0) + sigma * target[2]], sigma * target])
    lo, hi = np.full(6, max(float(fits.lower[poi]), 0.0)), np.full(6, np.inf)
    inits = np.concatenate([np.stack([ref.free.bestfit[0], probe.bestfit[0]]),
                            np.repeat(probe.bestfit, 5, axis=0)])
    stacked = np.stack([data] + [ref.asimov_data] * 6)
    done = np.zeros(6, dtype=bool)
    for _ in range(max_iterations):
        values = np.concatenate([[x[0], x[0]], x[1:]])
        fixed = fits.fixed_poi(stacked, values, inits)
        inits = fixed.bestfit
        q, dq = _qtilde(fixed, free_nll, mu_hat, values)
        q_a = np.maximum(fixed.twice_nll[1:] - ref.asimov_twice_nll, 0.0)
        dq_a = np.where(q_a > 0.0, fixed.poi_gradient[1:], 0.0)
        f0, d0 = _log_cls_and_slope(q[0], q_a[0], dq[0], dq_a[0])
        s_a = np.sqrt(q_a[1:])
        f = np.concatenate([[float(f0) - np.log(level)], target - s_a])
        slope = np.concatenate([[float(d0)], -dq_a[1:] / (2.0 * np.maximum(s_a, 1e-300))])
        lo = np.where(f > 0.0, x, lo)
        hi = np.where(f <= 0.0, x, hi)
        newton = x - f / np.where(slope < 0.0, slope, -np.inf)
        inside = (slope < 0.0) & (newton > lo) & (newton < hi)
        fallback = np.where(np.isfinite(hi), 0.5 * (lo + hi), 2.0 * np.maximum(x, 1e-6))
        step = np.where(inside, newton, fallback)
        done = np.abs(step - x) <= rtol * (1.0 + np.abs(x))
        x = np.where(done, x, step)
        if done.all():
            break
    return float(x[0]), x[1:], bool(done.all())


def significance(fits: Fits, data: np.ndarray, ref: _Reference
                 ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Observed and expected discovery significance ``Z = sqrt(q0)``.

    Returns:
        ``(z_observed, z_expected, background_rates, signal_plus_background_rates)``: the
        last two are the expected main yields at the fits with the POI at 0 and at 1 (for
        the zero-background check of the caller).
    """
    poi = fits.model.poi_index
    q0 = 0.0 if ref.free.bestfit[0, poi] < 0.0 else max(
        float(ref.background.twice_nll[0] - ref.free.twice_nll[0]), 0.0)
    at_one = fits.fixed_poi(data, 1.0, init=ref.free.bestfit[0])
    asimov = at_one.expected[0]
    asimov_nll = fits.twice_nll(at_one.bestfit[0], asimov)
    at_zero = fits.fixed_poi(asimov, 0.0, init=ref.background.bestfit[0])
    q0_a = max(float(at_zero.twice_nll[0] - asimov_nll), 0.0)
    n_bins = fits.model.n_bins
    rates_b = at_zero.expected[0][:n_bins]
    return float(np.sqrt(q0)), float(np.sqrt(q0_a)), rates_b, asimov[:n_bins]
