"""The constraint term of the likelihood: Gaussian and Poisson auxiliary measurements.

Entry ``i`` of the auxiliary data constrains parameter ``aux_pars[i]``: with a Gaussian
(normsys, histosys, lumi, staterror) of width ``sigma``, or with a Poisson of rate
``gamma * tau`` (shapesys). pyhf's numbers are static except those the templates set
(``templated`` in :data:`~diffana.stats.modifiers.MODIFIERS`): the staterror widths and the
shapesys ``tau`` (also its auxdata), unless the user's measurement configuration fixes them.

Example:
    >>> from diffana.stats.structure import Structure
    >>> import pyhf  # a signal and a background with uncorrelated bin uncertainties
    >>> spec = pyhf.simplemodels.uncorrelated_background([5.0, 2.0], [50.0, 20.0], [5.0, 4.0]).spec
    >>> constraint = ConstraintModel(Structure(spec))
    >>> templates = {"singlechannel": {"signal": {"data": jnp.array([5.0, 2.0])},
    ...     "background": {"data": jnp.array([50.0, 20.0]),
    ...                    "shapesys": {"uncorr_bkguncrt": jnp.array([5.0, 4.0])}}}}
    >>> constraint.numbers(templates)[0].tolist()  # auxdata: tau = (50 / 5)**2, (20 / 4)**2
    [100.0, 25.0]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffana.stats.densities import normal_logpdf, poisson_logpdf
from diffana.stats.modifiers import MODIFIERS, ConstraintScales, ModifierType
from diffana.stats.structure import Structure

__all__ = ["ConstraintModel"]


class _Templated(NamedTuple):
    """The sites of one modifier type whose templates set constraint numbers, in spec order."""

    kind: ModifierType
    m_type: str
    sites: list[tuple[str, str, str]]  # (channel, sample, modifier name)
    pars: np.ndarray  # the parameter of each bin of the sites


class ConstraintModel:
    """Auxiliary data, widths and rate factors of a spec's structure, and their likelihood.

    Args:
        structure: The spec's structure.
    """

    def __init__(self, structure: Structure):
        self.n_pars = structure.n_pars
        by_type: dict[str, list] = {}
        for m_type, site in structure.sites():
            if MODIFIERS[m_type].constrain is not None:
                by_type.setdefault(m_type, []).append(site)
        self.templated = [
            _Templated(kind, m_type, [(s.channel, s.sample, s.name) for s in by_type[m_type]],
                       np.array([i for s in by_type[m_type] for i in kind.pars(s)],
                                dtype=np.int64))
            for m_type, kind in MODIFIERS.items() if m_type in by_type
        ]

        config = structure.pyhf_model.config
        aux_pars, aux_is_normal = [], []
        static_sigma, static_factor = [], []
        sigma_from_templates, factor_from_templates, auxdata_from_templates = [], [], []
        for name in config.auxdata_order:
            param_set = config.param_set(name)
            par_slice = config.par_slice(name)
            n = param_set.n_parameters
            aux_pars.extend(range(par_slice.start, par_slice.start + n))
            user = structure.user_parameters.get(name, {})
            templated = structure.templated_constraint(name)
            if param_set.pdf_type == "normal":
                aux_is_normal.extend([True] * n)
                static_sigma.extend(param_set.width())
                static_factor.extend([1.0] * n)
                dynamic = templated == "sigma" and "sigmas" not in user
                sigma_from_templates.extend([dynamic] * n)
                factor_from_templates.extend([False] * n)
                auxdata_from_templates.extend([False] * n)
            elif param_set.pdf_type == "poisson":
                aux_is_normal.extend([False] * n)
                static_sigma.extend([1.0] * n)
                static_factor.extend(param_set.factors)
                sigma_from_templates.extend([False] * n)
                factor_from_templates.extend([templated == "tau" and "factors" not in user] * n)
                auxdata_from_templates.extend([templated == "tau" and "auxdata" not in user] * n)
            else:  # pragma: no cover - pyhf has no other constraint types
                raise ValueError(f"unknown constraint type {param_set.pdf_type!r} for {name}")
        self.aux_pars = np.array(aux_pars, dtype=np.int64)
        self.aux_is_normal = np.array(aux_is_normal, dtype=bool)
        self.sigma_from_templates = np.array(sigma_from_templates, dtype=bool)
        self.factor_from_templates = np.array(factor_from_templates, dtype=bool)
        self.auxdata_from_templates = np.array(auxdata_from_templates, dtype=bool)
        # the spec's numbers where the templates give them are never read: 1 there, so that
        # a compiled function does not depend on them (two workspaces of one structure and
        # other numbers compile to the same program, taken from the compilation cache)
        self.static_auxdata = np.where(self.auxdata_from_templates, 1.0,
                                       np.asarray(config.auxdata, dtype=np.float64))
        self.static_sigma = np.where(self.sigma_from_templates, 1.0,
                                     np.asarray(static_sigma, dtype=np.float64))
        self.static_factor = np.where(self.factor_from_templates, 1.0,
                                      np.asarray(static_factor, dtype=np.float64))
        self.normal_aux = np.flatnonzero(self.aux_is_normal)
        self.poisson_aux = np.flatnonzero(~self.aux_is_normal)

    def numbers(self, templates: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Auxdata, Gaussian widths and Poisson rate factors, one per aux entry.

        Args:
            templates: The numbers of the spec (see :meth:`diffana.stats.Model.templates`).
        """
        n_pars = self.n_pars
        scales = ConstraintScales(jnp.ones(n_pars, dtype=jnp.float64),
                                  jnp.ones(n_pars, dtype=jnp.float64))
        for group in self.templated:
            nominal = jnp.concatenate([templates[c][s]["data"] for c, s, _ in group.sites])
            uncertainty = jnp.concatenate(
                [templates[c][s][group.m_type][m] for c, s, m in group.sites]
            )
            scales = group.kind.constrain(scales, group.pars, nominal, uncertainty)
        sigma_par, tau_par = scales
        aux_pars = self.aux_pars
        auxdata = jnp.where(self.auxdata_from_templates, tau_par[aux_pars], self.static_auxdata)
        sigma = jnp.where(self.sigma_from_templates, sigma_par[aux_pars], self.static_sigma)
        factor = jnp.where(self.factor_from_templates, tau_par[aux_pars], self.static_factor)
        return auxdata, sigma, factor

    def expected(self, pars: jax.Array, numbers: tuple) -> jax.Array:
        """Expected auxiliary data: the parameter for Gaussian, ``gamma * tau`` for Poisson
        (``numbers``: what :meth:`numbers` gave)."""
        _, _, factor = numbers
        constrained = pars[self.aux_pars]
        return jnp.where(self.aux_is_normal, constrained, constrained * factor)

    def logpdf(self, pars: jax.Array, aux_data: jax.Array, numbers: tuple) -> jax.Array:
        """The summed Gaussian and Poisson constraint log densities (float64 inputs;
        ``numbers``: what :meth:`numbers` gave)."""
        _, sigma, factor = numbers
        constrained = pars[self.aux_pars]
        result = jnp.zeros((), dtype=jnp.float64)
        if self.normal_aux.size:
            i = self.normal_aux
            result = result + jnp.sum(normal_logpdf(aux_data[i], constrained[i], sigma[i]))
        if self.poisson_aux.size:
            i = self.poisson_aux
            result = result + jnp.sum(poisson_logpdf(aux_data[i], constrained[i] * factor[i]))
        return result
