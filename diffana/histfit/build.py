"""The pyhf workspace of a configuration with templates from a histogram file.

For each region the histograms ``<region>_<template>`` are read and rebinned to the region's
``binning`` (:mod:`~diffana.histfit.read`); the templates needed are the samples and what each
systematic type asks for (:data:`diffana.systematics.SYSTEMATICS`). The spec is then built by
:func:`diffana.stats.spec.build` with the observations from ``<region>_<data>``.

MC statistical uncertainties (``staterror``) need the variance of each nominal template. The
AGC fills a nominal template with one weight per sample, ``w = σ·L/N_total``
(:func:`diffana.events.sample_norm`), so its variance is ``w·Σw`` bin by bin. ``N_total``
comes, in this order, from ``n_total`` given to :func:`build_workspace` (the CLI's
``--n-total SAMPLE=N`` or ``--nanoaod-inputs FILE --files-per-process N``, see
:func:`agc_n_total`) or from ``samples.<name>.n_total`` in the configuration. Without
``N_total``, the variances stored in the file are used (a ROOT histogram's ``Σw²``, or
``"variances"`` in JSON); without either, it is an error.

Example:
    >>> from diffana.histfit import agc_n_total, build_workspace            # doctest: +SKIP
    >>> workspace = build_workspace(cfg, "histos_5_file_per_process.json",
    ...     n_total=agc_n_total("nanoaod_inputs.json", files_per_process=5))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from diffana.config import AnalysisConfig
from diffana.events import sample_norm
from diffana.exceptions import DataError
from diffana.histfit.read import read_histograms, rebin
from diffana.naming import histogram_key
from diffana.stats import spec
from diffana.systematics import SYSTEMATICS

__all__ = ["agc_n_total", "build_workspace", "event_weights"]


def agc_n_total(inputs: str | Path, files_per_process: int) -> dict[str, int]:
    """``N_total`` per process from the AGC file list (``nanoaod_inputs.json``).

    The AGC normalises a sample with ``σ·L/N_total``, ``N_total`` the summed ``nevts`` of the
    nominal files it processed: the first ``files_per_process`` of each process (all of them
    if there are fewer). ``histos_5_file_per_process.json`` was made with 5.

    Raises:
        DataError: the file is missing or not in the AGC layout.
    """
    path = Path(inputs)
    if files_per_process < 1:
        raise DataError(f"--files-per-process: must be >= 1, got {files_per_process}")
    try:
        content = json.loads(path.read_text())
        return {process: int(sum(f["nevts"] for f in variations["nominal"]["files"]
                                 [:files_per_process]))
                for process, variations in content.items() if "nominal" in variations}
    except FileNotFoundError:
        raise DataError(f"{path}: AGC input file list not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not an AGC input file list "
                        f"({{process: {{nominal: {{files: [{{nevts: ...}}]}}}}}}): "
                        f"{type(err).__name__}: {err}") from None


def event_weights(cfg: AnalysisConfig, n_total: dict[str, int] | None = None) -> dict[str, float]:
    """``w = σ·L/N_total`` for each nominal sample whose ``N_total`` and ``σ`` are known."""
    out = {}
    for name in cfg.nominal_samples:
        sample = cfg.samples[name]
        n = (n_total or {}).get(name, sample.n_total)
        if n is not None and sample.cross_section is not None:
            if n <= 0:
                raise DataError(f"N_total of sample {name!r} must be positive, got {n}")
            out[name] = sample_norm(sample.cross_section, cfg.luminosity, n)
    return out


def _needed_keys(cfg: AnalysisConfig, data: str) -> dict[str, list[str]]:
    """Per region, the template names (``yields[region]`` keys) the model needs."""
    names = list(cfg.samples)  # nominal samples and histosys variation samples
    for syst in cfg.model.systematics:
        kind = SYSTEMATICS[syst.type]
        for sample in kind.samples(syst, cfg.nominal_samples):
            names += kind.templates(syst, sample)
    names = list(dict.fromkeys(names))
    return {region: [*names, data] for region in cfg.regions}


def build_workspace(
    cfg: AnalysisConfig,
    histograms: str | Path,
    *,
    data: str = "pseudodata",
    n_total: dict[str, int] | None = None,
) -> dict:
    """The pyhf workspace (plain JSON) of ``cfg``'s model with templates from ``histograms``.

    Args:
        cfg: The configuration (regions, their binning, samples, ``model``).
        histograms: A JSON or ROOT file of histograms ``<region>_<sample>[_<variation>]``.
        data: The sample name of the observations (``<region>_<data>``).
        n_total: ``N_total`` per sample for the variances ``w·Σw`` (see the module docs);
            overrides ``samples.<name>.n_total``.

    Raises:
        DataError: a histogram is missing or malformed, binning edges do not match, or a
            nominal template has no variances while ``model.staterror`` is on.
    """
    weights = event_weights(cfg, n_total)
    needed = _needed_keys(cfg, data)
    hists = read_histograms(histograms, [histogram_key(r, k)
                                         for r, keys in needed.items() for k in keys])
    yields: dict[str, dict] = {}
    observations = {}
    for region, keys in needed.items():
        edges = cfg.regions[region].binning.edges
        yields[region] = {}
        for key in keys:
            name = histogram_key(region, key)
            h = rebin(hists[name], edges, f"{histograms}: {name}: regions.{region}.binning")
            if key == data:
                observations[region] = h.values
                continue
            entry = {"nominal": h.values}
            if key in cfg.nominal_samples and cfg.model.staterror:
                if key in weights:
                    entry["sumw2"] = weights[key] * h.values
                elif h.variances is not None:
                    entry["sumw2"] = h.variances
                else:
                    raise DataError(
                        f"{histograms}: {name}: no variances in the file and no N_total for "
                        f"sample {key!r} to compute w·Σw: give samples.{key}.n_total, "
                        f"--n-total {key}=N, or --nanoaod-inputs FILE --files-per-process N")
            yields[region][key] = entry
    workspace = spec.to_json(spec.build(cfg, yields, observations))
    import pyhf

    try:
        pyhf.Workspace(workspace)
    except pyhf.exceptions.InvalidSpecification as err:
        raise DataError(f"{histograms}: the workspace built from it is invalid: "
                        f"{str(err).splitlines()[0]}") from None
    return workspace
