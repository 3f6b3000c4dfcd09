"""The main term of the likelihood: the expected rates and their Poisson probability.

The rate of sample ``s`` in bin ``b`` is its nominal yield plus the ``"shift"`` modifiers'
interpolated shifts, times every ``"scale"`` parameter and ``"factor"`` (interpolated factor)
acting on it (pyhf's order: additions first, then multiplications). :class:`MainModel` lays
this out once, as index arrays, from a :class:`~diffana.stats.structure.Structure` and the
modifier table (:data:`~diffana.stats.modifiers.MODIFIERS`); evaluating it is a gather, a
scatter and a product over a few static factor slots.

Example:
    >>> from diffana.stats.structure import Structure
    >>> spec = {"channels": [{"name": "SR", "samples": [
    ...     {"name": "signal", "data": [5.0, 2.0],
    ...      "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
    ...     {"name": "ttbar", "data": [50.0, 20.0], "modifiers": []},
    ... ]}]}
    >>> main = MainModel(Structure(spec))
    >>> templates = {"SR": {"signal": {"data": jnp.array([5.0, 2.0])},
    ...                     "ttbar": {"data": jnp.array([50.0, 20.0])}}}
    >>> main.expected(jnp.array([2.0]), main.numbers(templates)).tolist()
    [60.0, 24.0]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffana.stats.densities import poisson_logpdf
from diffana.stats.modifiers import MODIFIERS, Interpolation, ModifierType, interpolation
from diffana.stats.structure import Structure

__all__ = ["MainModel", "MainNumbers", "product_over_slots"]


def product_over_slots(rows: jax.Array) -> jax.Array:
    """The product over the first axis (the few, static factor slots), written out:
    ``jnp.prod``'s derivative rule guards against zeros, which makes second derivatives
    (Newton's Hessian) and the gradient of a Fisher matrix in the templates costly to
    compile."""
    product = rows[0]
    for k in range(1, rows.shape[0]):
        product = product * rows[k]
    return product


class MainNumbers(NamedTuple):
    """What the main term reads from the templates (:meth:`MainModel.numbers`), gathered once
    for many evaluations at other parameters (a fit)."""

    nominal: jax.Array  # flattened (sample, bin)
    shifts: list[tuple]  # each "shift" type's interpolation terms (Interpolation.terms)
    factors: list[tuple]  # each "factor" type's


class _Applied(NamedTuple):
    """The sites of one ``"factor"`` or ``"shift"`` modifier type, in spec order."""

    kind: ModifierType
    sites: list[tuple[str, str, str]]  # (channel, sample, modifier name)
    alpha: np.ndarray  # parameter per site ("factor") or per bin ("shift")
    positions: np.ndarray  # "shift": its bins in the flattened (sample, bin) rates
    interpolation: Interpolation  # the code the model uses


class MainModel:
    """Expected rates and the main Poisson term of a spec's structure.

    Args:
        structure: The spec's structure.
    """

    def __init__(self, structure: Structure):
        n_pars, n_bins = structure.n_pars, structure.n_bins
        self.n_samples, self.n_bins = len(structure.samples), n_bins
        sample_index = {name: i for i, name in enumerate(structure.samples)}

        # Where each (channel, sample) sits in the flattened (sample, bin) rate array.
        self.nominal_sites: list[tuple[str, str]] = []
        positions = []
        for channel, sample, bins in structure.sample_bins():
            self.nominal_sites.append((channel, sample))
            positions.append(sample_index[sample] * n_bins + bins)
        self.nominal_positions = np.concatenate(positions).astype(np.int64)

        # Multiplicative slots per (sample, bin): a parameter index, or (type, k) for the
        # k-th interpolated factor of a "factor" type (resolved below).
        slot_lists: list[list[list]] = [[[] for _ in range(n_bins)] for _ in structure.samples]
        by_type: dict[str, list] = {}
        for m_type, site in structure.sites():
            kind = MODIFIERS[m_type]
            pars = kind.pars(site)
            s = sample_index[site.sample]
            sites = by_type.setdefault(m_type, [])
            if kind.effect == "scale":
                for b, index in zip(site.bins, pars, strict=True):
                    slot_lists[s][b].append(index)
            elif kind.effect == "factor":
                for b in site.bins:
                    slot_lists[s][b].append((m_type, len(sites)))
            sites.append((site, pars, s * n_bins + site.bins))

        # Interpolated factors follow the parameters in the factor values, type by type.
        self.factors: list[_Applied] = []
        self.shifts: list[_Applied] = []
        first_factor: dict[str, int] = {}
        n_values = n_pars
        for m_type, kind in MODIFIERS.items():
            sites = by_type.get(m_type)
            if not sites or kind.effect == "scale":
                continue
            names = [(site.channel, site.sample, site.name) for site, _, _ in sites]
            code = interpolation(m_type, structure.modifier_settings)
            if kind.effect == "factor":
                first_factor[m_type] = n_values
                n_values += len(sites)
                alpha = np.array([pars[0] for _, pars, _ in sites], dtype=np.int64)
                self.factors.append(_Applied(kind, names, alpha, np.zeros(0, dtype=np.int64),
                                             code))
            else:
                alpha = np.concatenate([np.asarray(pars) for _, pars, _ in sites])
                where = np.concatenate([p for _, _, p in sites])
                self.shifts.append(_Applied(kind, names, alpha.astype(np.int64),
                                            where.astype(np.int64), code))

        one_index = n_values  # the trailing 1.0 of the factor values fills unused slots
        # The parameter each factor value depends on (-1: the trailing 1.0).
        self.factor_pars = np.concatenate(
            [np.arange(n_pars), *[applied.alpha for applied in self.factors], [-1]]
        ).astype(np.int64)
        depth = max([1] + [len(f) for per_sample in slot_lists for f in per_sample])
        factor_index = np.full((depth, self.n_samples, n_bins), one_index, dtype=np.int64)
        for s, per_sample in enumerate(slot_lists):
            for b, slots in enumerate(per_sample):
                factor_index[: len(slots), s, b] = [
                    first_factor[slot[0]] + slot[1] if isinstance(slot, tuple) else slot
                    for slot in slots
                ]
        self.factor_index = factor_index

    def numbers(self, templates: dict) -> MainNumbers:
        """The numbers of ``templates`` the main term reads: the nominal yields, flattened
        ``(sample, bin)``, and each interpolated type's terms (what its interpolation code
        computes from the templates alone).

        Args:
            templates: The numbers of the spec (see :meth:`diffana.stats.Model.templates`).
        """
        nominal_values = [templates[c][s]["data"] for c, s in self.nominal_sites]
        flat = jnp.zeros(self.n_samples * self.n_bins, dtype=jnp.float64)

        def gathered(applied: _Applied) -> tuple:
            numbers = applied.kind.numbers([(templates[c][s], m) for c, s, m in applied.sites])
            return applied.interpolation.terms(*numbers)

        return MainNumbers(flat.at[self.nominal_positions].set(jnp.concatenate(nominal_values)),
                           [gathered(applied) for applied in self.shifts],
                           [gathered(applied) for applied in self.factors])

    def shift_values(self, pars: jax.Array, numbers: MainNumbers) -> list[jax.Array]:
        """The ``"shift"`` types' shifts, one array per type (bins at ``positions``); each
        entry depends on one parameter (``alpha``)."""
        return [applied.interpolation.at(pars[applied.alpha], *n)
                for applied, n in zip(self.shifts, numbers.shifts, strict=True)]

    def factor_values(self, pars: jax.Array, numbers: MainNumbers) -> jax.Array:
        """The values the factor slots gather (``factor_index``): the parameters, the
        interpolated factors and a trailing 1.0; each depends on one parameter
        (``factor_pars``)."""
        interpolated = [applied.interpolation.at(pars[applied.alpha], *n)
                        for applied, n in zip(self.factors, numbers.factors, strict=True)]
        return jnp.concatenate([pars, *interpolated, jnp.ones(1, dtype=jnp.float64)])

    def rates_by_sample(self, pars: jax.Array, numbers: MainNumbers) -> jax.Array:
        """Expected rates, shape ``(n_samples, n_bins)``, samples in pyhf order.

        Args:
            pars: float64 parameter values, pyhf order.
            numbers: What :meth:`numbers` gave for the templates.
        """
        flat = numbers.nominal
        for applied, shift in zip(self.shifts, self.shift_values(pars, numbers), strict=True):
            flat = flat.at[applied.positions].add(shift)
        factors = product_over_slots(self.factor_values(pars, numbers)[self.factor_index])
        return factors * flat.reshape(self.n_samples, self.n_bins)

    def expected(self, pars: jax.Array, numbers: MainNumbers) -> jax.Array:
        """Expected yields of all bins (summed over samples), shape ``(n_bins,)``."""
        return jnp.sum(self.rates_by_sample(pars, numbers), axis=0)

    def logpdf(self, data: jax.Array, rates: jax.Array) -> jax.Array:
        """The summed Poisson log density of the main ``data`` at the expected ``rates``."""
        return jnp.sum(poisson_logpdf(data, rates))
