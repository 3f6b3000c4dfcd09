"""The pyhf modifier types, one record each in :data:`MODIFIERS`: the one table to extend.

A record (:class:`ModifierType`) says everything the likelihood needs to know about a type:

- its ``effect`` on the expected rates: ``"scale"`` (its parameters multiply the bins),
  ``"factor"`` (one interpolated factor per sample multiplies its bins) or ``"shift"`` (an
  interpolated per-bin shift is added to the nominal yields, before any factor),
- ``pars``: which parameter acts on each bin of a sample,
- ``read``/``write``: its numbers in the spec <-> its leaf of the templates pytree,
- ``numbers``/``interpolations``: a ``"factor"``'s or ``"shift"``'s numbers gathered from
  its sites, and each interpolation code's terms of them (both once for many evaluations: a
  fit) and value,
- ``constrain``: how its templates set the numbers of its constraint (staterror widths,
  shapesys ``tau``), and ``templated``, which of them,
- ``settings``: its pyhf modifier settings (the interpolation code).

The main term (:mod:`~diffana.stats.main`), the constraint term
(:mod:`~diffana.stats.constraint`) and the templates of :class:`~diffana.stats.Model` read
only this table, so a new modifier type is one record here. The interpolations are pyhf's:
by default ``code4`` for normsys (:func:`normsys_code4`) and ``code4p`` for histosys
(:func:`histosys_code4p`); ``code1`` (:func:`normsys_code1`, piecewise exponential) and
``code0`` (:func:`histosys_code0`, piecewise linear) on request, as pyhf's
``modifier_settings`` (:func:`modifier_settings` builds them, :func:`interpolation` picks the
function).

Example:
    >>> import jax.numpy as jnp
    >>> print(f"{float(normsys_code4(jnp.asarray(0.5), 1.1, 0.9)):.6f}")
    1.049315
    >>> MODIFIERS["normsys"].effect, MODIFIERS["staterror"].templated
    ('factor', 'sigma')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffana.stats.densities import f64

__all__ = [
    "DEFAULT_MODIFIER_SETTINGS",
    "MODIFIERS",
    "ConstraintScales",
    "ModifierType",
    "Site",
    "histosys_code0",
    "histosys_code4p",
    "interpolation",
    "modifier_settings",
    "normsys_code1",
    "normsys_code4",
]

# Inverse of the 6x6 system fixing the code4 polynomial at alpha0 = 1 (value, first and
# second derivative matched to the exponential pieces at +-alpha0); pyhf interpolators/code4.py.
_CODE4_A_INVERSE = np.array(
    [
        [15.0 / 16, -15.0 / 16, -7.0 / 16, -7.0 / 16, 1.0 / 16, -1.0 / 16],
        [3.0 / 2, 3.0 / 2, -9.0 / 16, 9.0 / 16, 1.0 / 16, 1.0 / 16],
        [-5.0 / 8, 5.0 / 8, 5.0 / 8, 5.0 / 8, -1.0 / 8, 1.0 / 8],
        [3.0 / -2, 3.0 / -2, -7.0 / -8, 7.0 / -8, -1.0 / 8, -1.0 / 8],
        [3.0 / 16, -3.0 / 16, -3.0 / 16, -3.0 / 16, 1.0 / 16, -1.0 / 16],
        [1.0 / 2, 1.0 / 2, -5.0 / 16, 5.0 / 16, 1.0 / 16, 1.0 / 16],
    ]
)


def normsys_code4(alpha: jax.Array, hi: jax.Array, lo: jax.Array) -> jax.Array:
    """Multiplicative normsys factor with pyhf's ``code4`` interpolation (alpha0 = 1).

    Exponential ``hi**alpha`` for ``alpha >= 1``, ``lo**(-alpha)`` for ``alpha <= -1``, and in
    between the 6th-order polynomial that matches value, slope and curvature at +-1.

    Args:
        alpha: Nuisance-parameter values (broadcast against ``hi`` and ``lo``).
        hi: Factor at ``alpha = +1`` (must be > 0).
        lo: Factor at ``alpha = -1`` (must be > 0).

    Returns:
        The factor, with the broadcast shape of the inputs.
    """
    return _code4_at(alpha, *_code4_terms(hi, lo))


def _code4_terms(hi: jax.Array, lo: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``log hi``, ``log lo`` and the polynomial's coefficients, shape ``(6, ...)``."""
    log_hi, log_lo = jnp.log(hi), jnp.log(lo)
    rhs = jnp.stack(
        [hi - 1.0, lo - 1.0, log_hi * hi, -log_lo * lo, log_hi**2 * hi, log_lo**2 * lo]
    )
    return log_hi, log_lo, jnp.tensordot(f64(_CODE4_A_INVERSE), rhs, axes=1)


def _code4_at(alpha: jax.Array, log_hi: jax.Array, log_lo: jax.Array,
              coefficients: jax.Array) -> jax.Array:
    a1, a2, a3, a4, a5, a6 = coefficients
    # Horner form: cheaper to differentiate twice (and to compile) than a sum of powers.
    polynomial = 1.0 + alpha * (
        a1 + alpha * (a2 + alpha * (a3 + alpha * (a4 + alpha * (a5 + alpha * a6))))
    )
    abs_alpha = jnp.abs(alpha)
    # Each branch is finite for hi, lo > 0, so the unselected ones cannot leak NaN gradients.
    return jnp.where(
        alpha >= 1.0,
        jnp.exp(abs_alpha * log_hi),
        jnp.where(alpha > -1.0, polynomial, jnp.exp(abs_alpha * log_lo)),
    )


def histosys_code4p(
    alpha: jax.Array, lo: jax.Array, nominal: jax.Array, hi: jax.Array
) -> jax.Array:
    """Additive histosys shift with pyhf's ``code4p`` interpolation.

    Linear outside ``|alpha| <= 1``, a 6th-order polynomial inside.

    Args:
        alpha: Nuisance-parameter values, one per bin.
        lo: Template at ``alpha = -1``.
        nominal: Nominal template.
        hi: Template at ``alpha = +1``.

    Returns:
        The shift to add to the nominal yields.
    """
    return _code4p_at(alpha, *_code4p_terms(lo, nominal, hi))


def _code4p_terms(lo: jax.Array, nominal: jax.Array, hi: jax.Array) -> tuple:
    delta_up = hi - nominal
    delta_down = nominal - lo
    return (delta_up, delta_down, 0.5 * (delta_up + delta_down),
            0.0625 * (delta_up - delta_down))


def _code4p_at(alpha: jax.Array, delta_up: jax.Array, delta_down: jax.Array,
               symmetric: jax.Array, antisymmetric: jax.Array) -> jax.Array:
    alpha2 = alpha**2
    inside = alpha2 * (alpha2 * (alpha2 * 3.0 - 10.0) + 15.0) * antisymmetric
    inside = inside + alpha * symmetric
    return jnp.where(
        alpha < -1.0,
        alpha * delta_down,
        jnp.where(alpha > 1.0, alpha * delta_up, inside),
    )


def normsys_code1(alpha: jax.Array, hi: jax.Array, lo: jax.Array) -> jax.Array:
    """Multiplicative normsys factor with pyhf's ``code1`` (piecewise exponential) interpolation.

    ``hi**alpha`` for ``alpha > 0`` and ``lo**(-alpha)`` otherwise (pyhf's ``code1`` with a
    nominal of 1).

    Args:
        alpha: Nuisance-parameter values (broadcast against ``hi`` and ``lo``).
        hi: Factor at ``alpha = +1`` (must be > 0).
        lo: Factor at ``alpha = -1`` (must be > 0).

    Returns:
        The factor, with the broadcast shape of the inputs.
    """
    # alpha * (-log lo), not |alpha| * log lo: the same numbers, but a gradient at alpha = 0
    # (the left one), where a fit starts; |alpha|'s is 0 there and the fit would not move
    return _code1_at(alpha, *_code1_terms(hi, lo))


def _code1_terms(hi: jax.Array, lo: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.log(hi), -jnp.log(lo)


def _code1_at(alpha: jax.Array, log_hi: jax.Array, minus_log_lo: jax.Array) -> jax.Array:
    return jnp.exp(alpha * jnp.where(alpha > 0.0, log_hi, minus_log_lo))


def histosys_code0(
    alpha: jax.Array, lo: jax.Array, nominal: jax.Array, hi: jax.Array
) -> jax.Array:
    """Additive histosys shift with pyhf's ``code0`` (piecewise linear) interpolation.

    ``alpha * (hi - nominal)`` for ``alpha > 0``, ``alpha * (nominal - lo)`` otherwise.

    Args:
        alpha: Nuisance-parameter values, one per bin.
        lo: Template at ``alpha = -1``.
        nominal: Nominal template.
        hi: Template at ``alpha = +1``.

    Returns:
        The shift to add to the nominal yields.
    """
    return _code0_at(alpha, *_code0_terms(lo, nominal, hi))


def _code0_terms(lo: jax.Array, nominal: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    return hi - nominal, nominal - lo


def _code0_at(alpha: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    return jnp.where(alpha > 0.0, alpha * up, alpha * down)


class Interpolation(NamedTuple):
    """One pyhf interpolation code in two steps: ``terms(*numbers)``, what it computes from
    the templates alone (once per fit), and ``at(alpha, *terms)``, its value at ``alpha``.
    ``at(alpha, *terms(*numbers))`` is the code function itself (:func:`normsys_code4`, ...),
    operation for operation."""

    terms: Callable[..., tuple]
    at: Callable[..., jax.Array]


class Site(NamedTuple):
    """One modifier on one sample: the bins it acts on and where its parameters are.

    Attributes:
        channel: The sample's channel.
        sample: The sample.
        name: The modifier's name.
        bins: The channel's bins, as indices into all bins of all channels (pyhf order).
        first_par: Index of the modifier's first parameter (pyhf's ``par_slice`` start).
        covered: Sorted bins of every channel holding a modifier of this type and name.
    """

    channel: str
    sample: str
    name: str
    bins: np.ndarray
    first_par: int
    covered: list[int]


class ConstraintScales(NamedTuple):
    """Per parameter: the Gaussian constraint width and the Poisson constraint ``tau``."""

    sigma: jax.Array
    tau: jax.Array


class ModifierType(NamedTuple):
    """How one pyhf modifier type enters the likelihood (see the module docs).

    Attributes:
        effect: ``"scale"``, ``"factor"`` or ``"shift"``.
        pars: ``pars(site)``: the parameter index acting on each bin of ``site``.
        read: ``read(data)``: the spec's ``data`` as the templates' leaf (float64 arrays);
            ``None`` for a type without numbers.
        write: ``write(leaf, floats)``: the leaf back as the spec's ``data``, each array
            through ``floats``.
        numbers: For ``"factor"`` and ``"shift"`` types, ``numbers(sites)``: the arrays their
            interpolation reads, gathered from ``sites``, a list of ``(templates of the
            sample, modifier name)``.
        templated: ``"sigma"`` or ``"tau"``: the constraint number its templates set.
        constrain: ``constrain(scales, pars, nominal, uncertainty)``: the
            :class:`ConstraintScales` with those numbers set, from the nominal yields and
            the uncertainties of all its sites' bins (``pars``: their parameters).
        settings: pyhf's ``modifier_settings`` entry for the type (the default code).
        interpolations: For ``"factor"`` and ``"shift"`` types, the :class:`Interpolation`
            of each pyhf code (``"code1"``: ...): for ``"factor"``, with one ``alpha`` per
            site, one factor per site; for ``"shift"``, with ``alpha`` per bin, the shift per
            bin. ``settings`` names the default code.
    """

    effect: str
    pars: Callable[[Site], list[int]]
    read: Callable[[Any], Any] | None = None
    write: Callable[[Any, Callable[[Any], Any]], Any] | None = None
    templated: str | None = None
    constrain: Callable[..., ConstraintScales] | None = None
    settings: dict | None = None
    interpolations: dict[str, Interpolation] | None = None
    numbers: Callable[[list[tuple[dict, str]]], tuple] | None = None


# --- parameters per bin -----------------------------------------------------------------------


def _one_par(site: Site) -> list[int]:
    return [site.first_par] * len(site.bins)


def _par_per_bin(site: Site) -> list[int]:
    return list(range(site.first_par, site.first_par + len(site.bins)))


def _par_per_covered_bin(site: Site) -> list[int]:
    return [site.first_par + site.covered.index(b) for b in site.bins]


# --- numbers ----------------------------------------------------------------------------------


def _read_normsys(data: dict) -> dict:
    return {"hi": f64(data["hi"]), "lo": f64(data["lo"])}


def _write_normsys(leaf: dict, floats: Callable) -> dict:
    return {"hi": floats(leaf["hi"]), "lo": floats(leaf["lo"])}


def _read_histosys(data: dict) -> dict:
    return {"hi_data": f64(data["hi_data"]), "lo_data": f64(data["lo_data"])}


def _write_histosys(leaf: dict, floats: Callable) -> dict:
    return {"hi_data": floats(leaf["hi_data"]), "lo_data": floats(leaf["lo_data"])}


def _write_array(leaf: Any, floats: Callable) -> Any:
    return floats(leaf)


# --- interpolations ---------------------------------------------------------------------------


def _normsys_numbers(sites: list[tuple[dict, str]]) -> tuple[jax.Array, jax.Array]:
    hi = jnp.stack([f64(leaves["normsys"][name]["hi"]) for leaves, name in sites])
    lo = jnp.stack([f64(leaves["normsys"][name]["lo"]) for leaves, name in sites])
    return hi, lo


def _histosys_numbers(sites: list[tuple[dict, str]]) -> tuple[jax.Array, jax.Array, jax.Array]:
    his, los, noms = [], [], []
    for leaves, name in sites:
        his.append(leaves["histosys"][name]["hi_data"])
        los.append(leaves["histosys"][name]["lo_data"])
        noms.append(leaves["data"])
    return jnp.concatenate(los), jnp.concatenate(noms), jnp.concatenate(his)


# --- constraints from the templates ------------------------------------------------------------


def _staterror_widths(scales: ConstraintScales, index: np.ndarray, nominal: jax.Array,
                      uncertainty: jax.Array) -> ConstraintScales:
    """``sqrt(sum_s unc_s**2) / sum_s nominal_s`` per parameter; 1 for every other parameter."""
    n_pars = scales.sigma.shape[0]
    total_nominal = jnp.zeros(n_pars, dtype=jnp.float64).at[index].add(nominal)[index]
    positive = total_nominal > 0.0
    ratio = uncertainty / jnp.where(positive, total_nominal, 1.0)
    relative2 = jnp.zeros(n_pars, dtype=jnp.float64).at[index].add(
        jnp.where(positive, ratio**2, 0.0)
    )
    has_width = relative2 > 0.0
    # pyhf fixes zero-width staterror parameters and gives them width 1.
    sigma = jnp.where(has_width, jnp.sqrt(jnp.where(has_width, relative2, 1.0)), 1.0)
    return scales._replace(sigma=sigma)


def _shapesys_tau(scales: ConstraintScales, index: np.ndarray, nominal: jax.Array,
                  uncertainty: jax.Array) -> ConstraintScales:
    """``tau = (nominal / unc)**2``; 1 where either is zero (pyhf's rule)."""
    valid = (nominal > 0.0) & (uncertainty > 0.0)
    tau = jnp.where(valid, nominal**2 / jnp.where(valid, uncertainty, 1.0) ** 2, 1.0)
    return scales._replace(tau=scales.tau.at[index].set(tau))


# --- the table --------------------------------------------------------------------------------

#: Every supported pyhf modifier type by name (the order of the "not supported" message).
MODIFIERS: dict[str, ModifierType] = {
    "normfactor": ModifierType("scale", _one_par),
    "normsys": ModifierType("factor", _one_par, _read_normsys, _write_normsys,
                            settings={"interpcode": "code4"},
                            interpolations={"code1": Interpolation(_code1_terms, _code1_at),
                                            "code4": Interpolation(_code4_terms, _code4_at)},
                            numbers=_normsys_numbers),
    "histosys": ModifierType("shift", _one_par, _read_histosys, _write_histosys,
                             settings={"interpcode": "code4p"},
                             interpolations={"code0": Interpolation(_code0_terms, _code0_at),
                                             "code4p": Interpolation(_code4p_terms, _code4p_at)},
                             numbers=_histosys_numbers),
    "staterror": ModifierType("scale", _par_per_covered_bin, f64, _write_array,
                              templated="sigma", constrain=_staterror_widths),
    "shapesys": ModifierType("scale", _par_per_bin, f64, _write_array,
                             templated="tau", constrain=_shapesys_tau),
    "lumi": ModifierType("scale", _one_par),
    "shapefactor": ModifierType("scale", _par_per_bin),
}

#: pyhf's ``modifier_settings`` for every type that has some (the interpolation codes).
DEFAULT_MODIFIER_SETTINGS = {name: kind.settings for name, kind in MODIFIERS.items()
                             if kind.settings is not None}


def modifier_settings(codes: dict[str, str] | None = None) -> dict:
    """pyhf's ``modifier_settings``: the default codes with ``codes`` (``{type: code}``) over them.

    Args:
        codes: Interpolation code per modifier type, for example ``{"normsys": "code1"}``.

    Returns:
        ``{type: {"interpcode": code}}`` for every type with an interpolation.

    Raises:
        ValueError: a type without interpolation codes, or a code diffana does not have.

    Example:
        >>> modifier_settings({"normsys": "code1"})["normsys"]
        {'interpcode': 'code1'}
    """
    settings = {name: dict(kind) for name, kind in DEFAULT_MODIFIER_SETTINGS.items()}
    for m_type, code in (codes or {}).items():
        known = MODIFIERS[m_type].interpolations if m_type in MODIFIERS else None
        if not known:
            raise ValueError(f"interpolation: modifier type {m_type!r} has no interpolation "
                             f"codes (types with codes: {', '.join(DEFAULT_MODIFIER_SETTINGS)})")
        if code not in known:
            raise ValueError(f"interpolation: {m_type} {code!r} is not supported "
                             f"(supported: {', '.join(known)})")
        settings[m_type] = {"interpcode": code}
    return settings


def interpolation(m_type: str, settings: dict | None) -> Interpolation | None:
    """The :class:`Interpolation` of ``m_type`` for the interpolation code in ``settings``.

    Args:
        m_type: A modifier type of :data:`MODIFIERS`.
        settings: pyhf ``modifier_settings`` (``None``: the defaults).

    Returns:
        That code's (the type's default code's when ``settings`` names none; ``None`` for a
        type without interpolation).
    """
    kind = MODIFIERS[m_type]
    if kind.interpolations is None:
        return None
    code = (settings or {}).get(m_type, {}).get("interpcode") or kind.settings["interpcode"]
    return kind.interpolations[code]
