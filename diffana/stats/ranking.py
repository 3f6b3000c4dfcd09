"""The impacts of the nuisance parameters on the POI, as cabinetry's ranking computes them:
the POI's shift when a parameter is held at its best fit ± its pre-fit and post-fit
uncertainty, the others fitted again (all such fits batched into one compiled function)."""

from __future__ import annotations

import numpy as np

from diffana.stats.hypotest import IMPACT, FitBatch, Fits, prefit_uncertainties


def impacts(fits: Fits, data: np.ndarray, free: FitBatch, postfit: np.ndarray
            ) -> np.ndarray:
    """Pre- and post-fit impacts on the POI of every free nuisance parameter (cabinetry's).

    Args:
        fits: The compiled fits.
        data: Observed main and auxiliary data.
        free: The free fit.
        postfit: Post-fit uncertainty of every parameter.

    Returns:
        ``(shifts, converged)``: ``shifts`` of shape ``(n_pars, 4)``, the POI's shift with
        the parameter held at best fit + pre-fit, - pre-fit, + post-fit, - post-fit
        uncertainty (rows of the POI and of fixed parameters are 0; so are the entries of a
        zero uncertainty, which are not fitted); ``converged``: whether every fit converged.
    """
    poi = fits.model.poi_index
    bestfit = free.bestfit[0]
    prefit = prefit_uncertainties(fits.model)
    jobs = []
    for index in fits.free:
        if index == poi:
            continue
        for column, delta in enumerate((prefit[index], -prefit[index],
                                        postfit[index], -postfit[index])):
            if delta != 0.0 and np.isfinite(delta):
                jobs.append((index, column, bestfit[index] + delta))
    out = np.zeros((fits.model.n_pars, 4))
    if not jobs:
        return out, True
    # Each fit starts from the linear response of the others to the held parameter (the
    # covariance column: one Newton step from the best fit, known from its Hessian).
    free_index = fits.free
    try:
        covariance = np.linalg.inv(free.hessian[0][np.ix_(free_index, free_index)])
    except np.linalg.LinAlgError:
        covariance = np.zeros((free_index.size, free_index.size))
    position = {int(i): k for k, i in enumerate(free_index)}
    init = np.repeat(bestfit[None], len(jobs), axis=0)
    lower = np.repeat(fits.lower[None], len(jobs), axis=0)
    upper = np.repeat(fits.upper[None], len(jobs), axis=0)
    for row, (index, _, value) in enumerate(jobs):
        k = position[int(index)]
        if np.isfinite(covariance).all() and covariance[k, k] > 0:
            response = covariance[:, k] / covariance[k, k] * (value - bestfit[index])
            init[row, free_index] = np.clip(bestfit[free_index] + response,
                                            fits.lower[free_index], fits.upper[free_index])
        init[row, index] = lower[row, index] = upper[row, index] = value
    result = fits.run(data, init, lower, upper, IMPACT)
    for row, (index, column, _) in enumerate(jobs):
        out[index, column] = result.bestfit[row, poi] - bestfit[poi]
    return out, bool(result.converged.all())
