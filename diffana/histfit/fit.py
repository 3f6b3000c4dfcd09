"""The fit of a workspace to its observations, compiled once per model structure.

The fit is :func:`diffana.stats.infer.fit` (exact projected Newton); the uncertainties are
the square roots of the diagonal of ``2 H⁻¹``, ``H`` the autodiff Hessian of ``-2 ln L`` at
the minimum. The result is a :class:`FitSummary`.

Example:
    >>> from diffana.histfit import fit_workspace             # doctest: +SKIP
    >>> result = fit_workspace(workspace)                     # doctest: +SKIP
    >>> result.value(result.poi)                              # doctest: +SKIP
    (0.9533..., 0.0919...)
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffana.stats import Model, fit
from diffana.stats.modifiers import modifier_settings

__all__ = ["FitSummary", "fit_workspace", "observed_data"]


class FitSummary(NamedTuple):
    """Result of :func:`fit_workspace`, one entry per scalar parameter in pyhf order.

    ``uncertainty`` is ``sqrt(diag(2 H⁻¹))`` over the free parameters (0 for parameters pyhf
    fixes, NaN where the Hessian gives no positive variance). ``constraints`` maps each
    Gaussian-constrained nuisance parameter other than staterror to its ``(centre, width)``:
    what its pull is measured against.
    """

    poi: str
    names: list[str]
    bestfit: np.ndarray
    uncertainty: np.ndarray
    twice_nll: float
    converged: bool
    constraints: dict[str, tuple[float, float]]

    def to_json(self) -> dict:
        """The content of ``fit.json``."""

        def number(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "parameters": {n: {"bestfit": float(b), "uncertainty": number(u)}
                           for n, b, u in zip(self.names, self.bestfit, self.uncertainty,
                                              strict=True)},
            "twice_nll": float(self.twice_nll),
            "poi": self.poi,
            "converged": bool(self.converged),
        }

    def value(self, name: str) -> tuple[float, float]:
        """``(best fit, uncertainty)`` of a parameter."""
        i = self.names.index(name)
        return float(self.bestfit[i]), float(self.uncertainty[i])


def observed_data(workspace: dict, model: Model) -> np.ndarray:
    """Observations followed by auxiliary data, in pyhf order."""
    import pyhf

    return np.asarray(pyhf.Workspace(workspace).data(model.pyhf_model), dtype=np.float64)


#: Compiled fits by model structure: one compilation serves every workspace of that structure.
_COMPILED: dict[str, tuple[Model, object]] = {}


def _structure_key(workspace: dict, model: Model) -> str:
    """What a :class:`Model` fixes at construction: the spec without its numbers, the
    measurement, and the parameters pyhf fixes (staterror bins of zero width)."""

    def skeleton(obj):
        if isinstance(obj, dict):
            return {k: skeleton(v) for k, v in obj.items()}
        if isinstance(obj, list) and obj and all(isinstance(x, (int, float)) for x in obj):
            return len(obj)
        if isinstance(obj, list):
            return [skeleton(x) for x in obj]
        return None if isinstance(obj, float) else obj

    return json.dumps([skeleton(workspace["channels"]), workspace["measurements"],
                       model.suggested_fixed.tolist(), model.modifier_settings], sort_keys=True)


def _compiled_fit(workspace: dict, interpolation: dict[str, str] | None = None
                  ) -> tuple[Model, object]:
    """The model structure of ``workspace`` (with the ``interpolation`` codes) and a jitted
    ``(data, templates) -> (FitResult, Hessian of -2 ln L over the free parameters at the
    best fit)``."""
    model = Model(workspace, modifier_settings=modifier_settings(interpolation))
    key = _structure_key(workspace, model)
    if key not in _COMPILED:
        free = np.flatnonzero(~model.suggested_fixed)

        @jax.jit
        def fit_and_hessian(data, templates):
            result = fit(model, data, templates)
            bestfit = jax.lax.stop_gradient(result.bestfit)

            def twice_nll(x):
                return -2.0 * model.logpdf(bestfit.at[free].set(x), data, templates)

            return result, jax.hessian(twice_nll)(bestfit[free])

        if len(_COMPILED) >= 4:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = (model, fit_and_hessian)
    return _COMPILED[key]


def _constraints(model: Model, poi: str) -> dict[str, tuple[float, float]]:
    """``(centre, width)`` of the scalar Gaussian-constrained parameters, staterror left out."""
    config = model.pyhf_model.config
    staterror = {name for name, kind in config.modifiers if kind == "staterror"}
    auxdata = np.asarray(config.auxdata, dtype=np.float64)
    out, start = {}, 0
    for name in config.auxdata_order:
        param_set = config.param_set(name)
        n = param_set.n_parameters
        if (name != poi and name not in staterror and n == 1
                and getattr(param_set, "pdf_type", None) == "normal"):
            out[name] = (float(auxdata[start]), float(param_set.width()[0]))
        start += n
    return out


def fit_workspace(workspace: dict, interpolation: dict[str, str] | None = None) -> FitSummary:
    """Maximum-likelihood fit of a workspace to its observations, with Hessian uncertainties.

    The fit is :func:`diffana.stats.infer.fit` (exact projected Newton); the uncertainties are
    ``sqrt(diag(2 H⁻¹))`` with ``H`` the autodiff Hessian of ``-2 ln L`` over the free
    parameters at the minimum (iminuit's HESSE, without its finite-difference noise). The
    compiled fit is kept per model structure, so further workspaces of the same structure
    (other histogram files of the same analysis) do not compile again. ``interpolation``:
    the codes per modifier type (``{"normsys": "code1"}``; default: pyhf's).
    """
    model, fit_and_hessian = _compiled_fit(workspace, interpolation)
    templates = model.templates(workspace)
    data = jnp.asarray(observed_data(workspace, model))
    result, hessian = fit_and_hessian(data, templates)
    free = np.flatnonzero(~model.suggested_fixed)
    try:
        variance = np.diag(2.0 * np.linalg.inv(np.asarray(hessian)))
    except np.linalg.LinAlgError:
        variance = np.full(free.size, np.nan)
    uncertainty = np.zeros(model.n_pars)
    uncertainty[free] = np.where(variance > 0, np.sqrt(np.abs(variance)), np.nan)
    poi = model.par_names[model.poi_index]
    return FitSummary(
        poi=poi,
        names=list(model.par_names),
        bestfit=np.asarray(result.bestfit, dtype=np.float64),
        uncertainty=uncertainty,
        twice_nll=float(result.twice_nll),
        converged=bool(result.converged),
        constraints=_constraints(model, poi),
    )
