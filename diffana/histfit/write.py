"""The outputs of ``diffana fit``: the workspace, the fit result, the pulls plot, the
inference and a summary.

:func:`fit_histograms` is the whole chain: read the configuration, build the workspace from
the histogram file (:mod:`~diffana.histfit.build`), fit it (:mod:`~diffana.histfit.fit`) and
write ``workspace.json``, ``pulls.png``, ``inference.json`` with its figures (as ``diffana
infer``; the configuration's ``inference:``) and ``fit.json`` (last).

Example:
    >>> from diffana.histfit import agc_n_total, fit_histograms        # doctest: +SKIP
    >>> n_total = agc_n_total("nanoaod_inputs.json", files_per_process=5)  # doctest: +SKIP
    >>> fit_histograms("configs/agc_ttbar.yaml", "histos_5_file_per_process.json",
    ...                "runs/agc-fit", n_total=n_total)                 # doctest: +SKIP
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from diffana import config as configmod
from diffana import files, guards, report
from diffana.compilation import use_compilation_cache
from diffana.histfit.build import build_workspace
from diffana.histfit.fit import FitSummary, fit_workspace
from diffana.inference import FILE as INFERENCE_JSON
from diffana.inference import digest, headline, settings, write_inference
from diffana.log import logger

__all__ = ["fit_histograms", "pulls_plot", "summary"]


def pulls_plot(result: FitSummary, path: Path) -> None:
    """Pulls of the nuisance parameters (staterror left out), with ±1σ and ±2σ bands."""
    import mplhep
    from matplotlib import style
    from matplotlib.figure import Figure

    from diffana.plot import save

    pulls = []
    for name, (centre, width) in result.constraints.items():
        value, uncertainty = result.value(name)
        pulls.append((name, (value - centre) / width, uncertainty / width))
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8, 1.5 + 0.45 * max(1, len(pulls))))
        ax = fig.subplots()
        y = np.arange(len(pulls))[::-1]
        ax.fill_betweenx([-0.5, len(pulls) - 0.5], -2, 2, color="yellow")
        ax.fill_betweenx([-0.5, len(pulls) - 0.5], -1, 1, color="limegreen")
        ax.axvline(0, color="black", ls="dotted", lw=1)
        if pulls:
            ax.errorbar([p[1] for p in pulls], y, xerr=[p[2] for p in pulls], fmt="o",
                        color="black")
        ax.set_yticks(y, [p[0] for p in pulls], fontsize=13)
        ax.set_ylim(-0.5, len(pulls) - 0.5)
        ax.set_xlim(-3, 3)
        ax.set_xlabel(r"$(\hat{\theta} - \theta_0)/\Delta\theta$")
        value, uncertainty = result.value(result.poi)
        ax.set_title(f"{result.poi} = {value:.4f} ± {uncertainty:.4f}", fontsize=14)
        save(fig, path)


def summary(result: FitSummary) -> str:
    """One table: the POI ± its uncertainty first, then every nuisance parameter."""
    poi = result.names.index(result.poi)
    order = [poi, *[i for i in range(len(result.names)) if i != poi]]
    rows = [[result.names[i], f"{result.bestfit[i]:.4f}", f"{result.uncertainty[i]:.4f}"]
            for i in order]
    head = (f"fit: -2 ln L = {result.twice_nll:.5f}, "
            f"{'converged' if result.converged else 'NOT converged'}; "
            f"{result.poi} = {result.bestfit[poi]:.4f} ± {result.uncertainty[poi]:.4f}")
    return head + "\n" + report.table(rows, ["parameter", "best fit", "uncertainty"])


def fit_histograms(
    config_path: str | Path,
    histograms: str | Path,
    out: str | Path | None = None,
    *,
    data: str = "pseudodata",
    n_total: dict[str, int] | None = None,
    echo=None,
    inference: bool | None = None,
) -> dict:
    """Build the model from histograms, fit it and write ``workspace.json``, ``pulls.png``,
    ``inference.json`` with its figures and ``fit.json`` (last) into ``out`` (default
    ``runs/<name>-fit-<timestamp>``). ``inference`` overrides ``inference.enabled``.

    Returns:
        The content of ``fit.json`` (``inference``: the file and the numbers quoted, or
        ``None``).
    """
    cfg = configmod.load(config_path)
    use_compilation_cache(cfg.compilation_cache)  # as a run: compiled once for all calls
    workspace = build_workspace(cfg, histograms, data=data, n_total=n_total)
    codes = cfg.model.interpolation.codes()
    result = fit_workspace(workspace, codes)
    out_dir = Path(out) if out else Path("runs") / (
        f"{cfg.name}-fit-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise files.cannot("create", out_dir, err) from None
    if (out_dir / "fit.json").exists():
        (out_dir / "fit.json").unlink()  # a rerun into the same directory starts over
    report.write_json(out_dir / "workspace.json", workspace)
    pulls_plot(result, out_dir / "pulls.png")
    fit_json = {**result.to_json(), "inference": None}
    (out_dir / INFERENCE_JSON).unlink(missing_ok=True)  # a rerun without it leaves none
    if cfg.inference.enabled if inference is None else inference:
        quoted = write_inference(workspace, out_dir, plots=cfg.inference.plots, echo=None,
                                 **settings(cfg))
        fit_json["inference"] = digest(quoted)
        for warning in quoted["warnings"]:
            logger.warning(guards.line(guards.Flag("inference", warning, INFERENCE_JSON)))
    report.write_json(out_dir / "fit.json", fit_json)
    if echo is not None:  # e.g. print: the command line's
        echo(summary(result))
        if fit_json["inference"] is not None:
            echo("\n".join(headline(fit_json["inference"])))
        echo(f"wrote {out_dir}/fit.json, workspace.json, pulls.png"
             + (f", {INFERENCE_JSON} and its figures" if fit_json["inference"] else ""))
    return fit_json
