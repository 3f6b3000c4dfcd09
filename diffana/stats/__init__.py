"""Statistics: the pyhf spec, a differentiable HistFactory likelihood, fits and figures of merit.

The modules, in the order the statistical part of an analysis goes through them:

- :mod:`~diffana.stats.spec`: the pyhf workspace spec from the configuration and the yields
  (``build``, ``to_json``),
- :mod:`~diffana.stats.model`: :class:`Model`, pyhf's likelihood as a pure JAX function of
  ``(pars, data, templates)``, assembled from :mod:`~diffana.stats.structure` (what the
  spec fixes), :mod:`~diffana.stats.main` (the Poisson term), :mod:`~diffana.stats.constraint`
  (the auxiliary measurements) and :mod:`~diffana.stats.modifiers` (one record per pyhf
  modifier type, with the interpolation codes),
- :mod:`~diffana.stats.infer`: the bounded maximum-likelihood fit (implicitly
  differentiated), discovery significance, expected CLs, the POI uncertainty and the
  closed-form Asimov significance; :mod:`~diffana.stats.limit`: the median expected upper
  limit (implicitly differentiated at its root),
- :mod:`~diffana.stats.hypotest`: observed and expected CLs, upper limits, the significance,
  impacts and scans as pyhf and cabinetry report them (``diffana infer``).

Importing this package switches JAX to float64 (``diffana/__init__.py`` does it).

Example:
    >>> from diffana.stats import Model, discovery_significance
    >>> import pyhf  # a signal and a background with uncorrelated bin uncertainties
    >>> spec = pyhf.simplemodels.uncorrelated_background([5.0, 10.0], [50.0, 20.0], [5.0, 4.0]).spec
    >>> model = Model(spec)
    >>> print(f"{float(discovery_significance(model, model.templates())):.4f}")
    1.6042
"""

from diffana.stats import infer
from diffana.stats.infer import *  # noqa: F403 (the fits and figures of merit: infer.__all__)
from diffana.stats.limit import expected_upper_limit
from diffana.stats.model import Model, Templates

__all__ = ["Model", "Templates", "expected_upper_limit", *infer.__all__]
