"""``diffana fit``: the statistical model built from histograms and fitted to data.

This is cabinetry's histogram mode with diffana's model: the histograms come from a file
instead of from the event selection. The steps, one module each:

- :mod:`~diffana.histfit.read`: the histogram file (JSON in the layout of the AGC reference
  histograms, ``{"<region>_<sample>[_<variation>]": {"edges": [...], "contents": [...]}}``,
  or ROOT with one TH1 per key) and the rebinning to each region's ``binning``,
- :mod:`~diffana.histfit.build`: the pyhf workspace (:func:`diffana.stats.spec.build`:
  staterror, normfactor and the configured systematics) with the observations from
  ``<region>_<data>`` (default ``pseudodata``), and the ``staterror`` variances ``w·Σw`` from
  ``w = σ·L/N_total``,
- :mod:`~diffana.histfit.fit`: the fit (:func:`diffana.stats.infer.fit`), compiled once per
  model structure, with uncertainties from the diagonal of ``2 H⁻¹``,
- :mod:`~diffana.histfit.write`: ``workspace.json``, ``pulls.png``, ``fit.json`` and the
  printed summary.

Example:
    >>> from diffana.histfit import agc_n_total, fit_histograms        # doctest: +SKIP
    >>> n_total = agc_n_total("nanoaod_inputs.json", files_per_process=5)  # doctest: +SKIP
    >>> fit_histograms("configs/agc_ttbar.yaml", "histos_5_file_per_process.json",
    ...                "runs/agc-fit", n_total=n_total)                 # doctest: +SKIP
"""

from diffana.histfit.build import agc_n_total, build_workspace, event_weights
from diffana.histfit.fit import FitSummary, fit_workspace
from diffana.histfit.read import Histogram, read_histograms, rebin
from diffana.histfit.write import fit_histograms, summary

__all__ = [
    "FitSummary",
    "Histogram",
    "agc_n_total",
    "build_workspace",
    "event_weights",
    "fit_histograms",
    "fit_workspace",
    "read_histograms",
    "rebin",
    "summary",
]
