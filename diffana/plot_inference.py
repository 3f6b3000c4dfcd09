"""Figures of ``diffana infer``: the ``CLs`` scan with its Brazil band, the ranking (impacts
with pulls), the likelihood scan and the correlation matrix. Each is written as PNG and PDF.

They take the results (``inference.json``'s content and the ``CLs`` scan), never compute
statistics themselves.

Example:
    >>> from diffana.plot_inference import all_figures               # doctest: +SKIP
    >>> all_figures(result, details, Path("out"))                     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["FIGURES", "all_figures", "cls_scan", "correlation", "drawings", "likelihood_scan",
           "ranking"]

#: The figures (each as PNG and PDF); the first two only where there is something to show.
FIGURES = ("cls_scan", "ranking", "likelihood_scan", "correlation")
#: Parameters shown in the ranking figure (the largest post-fit impacts).
RANKING_MAX = 20
#: Parameters beyond which the correlation matrix shows no numbers in its cells.
CORRELATION_LABELLED = 25


def _context():
    import mplhep
    from matplotlib import style

    return style.context(mplhep.style.CMS)


def cls_scan(poi: str, grid, observed, expected, limit: dict, path: Path) -> None:
    """Observed ``CLs`` against the POI over the expected median with ±1σ/±2σ bands, the
    ``CLs`` level and the limits."""
    from matplotlib.figure import Figure

    from diffana.plot import save

    expected = np.asarray(expected)
    with _context():
        fig = Figure(figsize=(9, 7))
        ax = fig.subplots()
        ax.fill_between(grid, expected[:, 0], expected[:, 4], color="yellow",
                        label=r"expected $\pm 2\sigma$")
        ax.fill_between(grid, expected[:, 1], expected[:, 3], color="limegreen",
                        label=r"expected $\pm 1\sigma$")
        ax.plot(grid, expected[:, 2], color="black", ls="--", label="expected")
        ax.plot(grid, observed, color="black", marker="o", ms=3, label="observed")
        level = limit["level"]
        ax.axhline(level, color="red", lw=1.2, label=f"CLs = {level:g}")
        if limit["observed"] is not None:
            ax.axvline(limit["observed"], color="black", lw=0.8, ls=":")
        ax.set_xlabel(rf"{poi} (parameter of interest)")
        ax.set_ylabel(r"$\mathrm{CL}_{s}$")
        if grid[0] > 0 and grid[-1] / grid[0] > 50:  # limits orders of magnitude apart
            ax.set_xscale("log")
            ax.set_xlim(grid[0], grid[-1])
        else:
            ax.set_xlim(0, grid[-1])
        ax.set_ylim(0, 1.3)
        exp = limit["expected"]
        if limit["observed"] is not None:
            text = (f"{100 * (1 - level):g}% CL upper limit\nobserved {limit['observed']:.4g}\n"
                    f"expected {exp[2]:.4g}"
                    + rf" $^{{+{exp[3] - exp[2]:.2g}}}_{{-{exp[2] - exp[1]:.2g}}}$")
            ax.text(0.03, 0.97, text, transform=ax.transAxes, ha="left", va="top", fontsize=15)
        ax.legend(loc="upper right", fontsize=13, ncols=2)
        save(fig, path)


def ranking(poi: str, rows: list[dict], path: Path, max_pars: int = RANKING_MAX) -> None:
    """Pre- and post-fit impacts on the POI (bars, top axis) and the pulls (points, bottom
    axis) of the parameters with the largest post-fit impacts, as cabinetry draws them."""
    from matplotlib.figure import Figure

    from diffana.plot import save

    rows = rows[:max_pars]
    n = max(len(rows), 1)
    with _context():
        fig = Figure(figsize=(9, 2.5 + 0.45 * n))
        ax_pulls = fig.subplots()
        ax_impact = ax_pulls.twiny()
        y = np.arange(len(rows))[::-1]

        def values(key, i):
            return np.array([r[key][i] or 0.0 for r in rows])

        height = 0.7
        ax_impact.barh(y, values("prefit", 1), height, fill=False, edgecolor="C0",
                       label="pre-fit impact: $\\theta = \\hat{\\theta} - \\Delta\\theta$")
        ax_impact.barh(y, values("prefit", 0), height, fill=False, edgecolor="C1",
                       label="pre-fit impact: $\\theta = \\hat{\\theta} + \\Delta\\theta$")
        ax_impact.barh(y, values("postfit", 1), height, color="C0", alpha=0.7,
                       label=r"post-fit impact: $\theta = \hat{\theta} - \sigma_{\hat{\theta}}$")
        ax_impact.barh(y, values("postfit", 0), height, color="C1", alpha=0.7,
                       label=r"post-fit impact: $\theta = \hat{\theta} + \sigma_{\hat{\theta}}$")
        reach = max([1e-12] + [abs(r[k][i] or 0.0) for r in rows for k in ("prefit", "postfit")
                               for i in (0, 1)])
        ax_impact.set_xlim(-1.6 * reach, 1.6 * reach)
        ax_impact.set_xlabel(rf"$\Delta${poi}", fontsize=16)
        ax_pulls.errorbar(values("pull", 0), y, xerr=values("pull", 1), fmt="o",
                          color="black", label="pull")
        ax_pulls.axvline(0, color="grey", ls="dotted", lw=1)
        ax_pulls.set_xlim(-2, 2)
        ax_pulls.set_xlabel(r"$(\hat{\theta} - \theta_0)/\Delta\theta$", fontsize=16)
        ax_pulls.set_yticks(y, [r["parameter"] for r in rows], fontsize=12)
        ax_pulls.set_ylim(-0.5, n + 1.8)
        handles = ax_impact.get_legend_handles_labels()
        pull_handles = ax_pulls.get_legend_handles_labels()
        ax_pulls.legend(handles[0] + pull_handles[0], handles[1] + pull_handles[1],
                        loc="upper center", ncols=2, fontsize=10, frameon=False)
        save(fig, path)


def likelihood_scan(poi: str, scan: dict, bestfit: dict, path: Path) -> None:
    """``-2 Δ ln L`` against the POI, with the 1σ and 2σ levels."""
    from matplotlib.figure import Figure

    from diffana.plot import save

    x = np.array(scan["poi_values"], dtype=float)
    y = np.array([np.nan if v is None else v for v in scan["delta_twice_nll"]], dtype=float)
    with _context():
        fig = Figure(figsize=(9, 7))
        ax = fig.subplots()
        ax.plot(x, y, color="black", marker="o", ms=3, label="profile likelihood")
        for level, label in ((1.0, r"1$\sigma$"), (4.0, r"2$\sigma$")):
            ax.axhline(level, color="grey", ls="--", lw=1)
            ax.text(x[0], level, f" {label}", va="bottom", color="grey", fontsize=14)
        value, error = bestfit["value"], bestfit["error"]
        ax.axvline(value, color="C0", lw=1)
        ax.set_xlabel(poi)
        ax.set_ylabel(r"$-2\,\Delta\ln L$")
        ax.set_ylim(0, max(float(np.nanmax(y)) * 1.1, 5.0) if np.isfinite(y).any() else 5.0)
        ax.set_title(f"{poi} = {value:.4g} ± {error:.2g}" if error is not None
                     else f"{poi} = {value:.4g}", fontsize=16)
        ax.legend(loc="upper center", fontsize=15)
        save(fig, path)


def correlation(corr: dict, path: Path) -> None:
    """The correlation matrix of the free parameters (numbers in the cells when few)."""
    from matplotlib.figure import Figure

    from diffana.plot import save

    names = corr["parameters"]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in corr["matrix"]],
                      dtype=float)
    n = max(len(names), 1)
    # room for the numbers in the cells where they are shown; without them, cells for the
    # labels alone, whose 9-point type stays legible on a slide (the AGC's 33 parameters:
    # 13.9 inches, not 18.9)
    size = min(4 + (0.45 if n <= CORRELATION_LABELLED else 0.3) * n, 24)
    with _context():
        fig = Figure(figsize=(size + 1.5, size))
        ax = fig.subplots()
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="none")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="correlation")
        fontsize = max(6, min(12, int(300 / n)))
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(names)), names, fontsize=fontsize)
        ax.minorticks_off()
        if len(names) <= CORRELATION_LABELLED:
            for i in range(len(names)):
                for j in range(len(names)):
                    if np.isfinite(matrix[i, j]):
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                                fontsize=max(5, fontsize - 3),
                                color="white" if abs(matrix[i, j]) > 0.6 else "black")
        save(fig, path)


def drawings(result: dict, details: dict, out_dir: Path) -> list[tuple]:
    """Every figure of ``inference.json`` as ``(function, *arguments)``, in the order of
    :data:`FIGURES`; each writes its PNG (the last argument) and PDF."""
    poi = result["poi"]
    out_dir = Path(out_dir)
    calls = []
    if "cls_scan" in details and result["upper_limit"]["observed"] is not None:
        grid, observed, expected = details["cls_scan"]
        calls.append((cls_scan, poi, grid, observed, expected, result["upper_limit"],
                      out_dir / "cls_scan.png"))
    if result["ranking"]:
        calls.append((ranking, poi, result["ranking"], out_dir / "ranking.png"))
    calls.append((likelihood_scan, poi, result["scan"], result["bestfit"][poi],
                  out_dir / "likelihood_scan.png"))
    calls.append((correlation, result["correlation"], out_dir / "correlation.png"))
    return calls


def all_figures(result: dict, details: dict, out_dir: Path) -> list[Path]:
    """Every figure of ``inference.json`` into ``out_dir``; returns the PNG paths."""
    calls = drawings(result, details, out_dir)
    for draw, *args in calls:
        draw(*args)
    return [args[-1] for _, *args in calls]
