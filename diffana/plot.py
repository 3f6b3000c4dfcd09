"""Plots for a run directory (mplhep CMS style): history, templates, sensitivity."""

from __future__ import annotations

from pathlib import Path

import mplhep
import numpy as np
from matplotlib import style
from matplotlib.figure import Figure

from diffana import files

# Figures are made with matplotlib's object API (Figure, not pyplot): they render to files
# with the Agg canvas whatever backend the user's session has, and diffana sets no global
# matplotlib state.


def _save(fig, path: Path) -> None:
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def history(hist: dict[str, np.ndarray], objective: str, path: Path) -> None:
    """The objective and each trainable parameter against the optimiser step."""
    params = [k for k in hist if k not in ("step", "objective")]
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8, 2.6 * (1 + len(params))))
        axes = fig.subplots(1 + len(params), 1, sharex=True, squeeze=False)
        axes = axes[:, 0]
        axes[0].plot(hist["step"], hist["objective"], color="black")
        axes[0].set_ylabel(objective.replace("_", " "), fontsize=14)
        for ax, name in zip(axes[1:], params, strict=True):
            ax.plot(hist["step"], hist[name], color="tab:blue")
            ax.set_ylabel(name, fontsize=14)
        axes[-1].set_xlabel("optimiser step")
        _save(fig, path)


def templates(stages: dict[str, dict], path: Path, signal: list[str],
              data: dict[str, dict] | None = None) -> None:
    """Stacked hard-cut histograms per region (rows) before and after optimisation (columns),
    with ``data[stage][region]`` (e.g. pseudodata) as points."""
    stage_names = list(stages)
    regions = list(next(iter(stages.values())))
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8 * len(stage_names), 6 * len(regions)))
        axes = fig.subplots(len(regions), len(stage_names), squeeze=False)
        for j, stage in enumerate(stage_names):
            for i, region in enumerate(regions):
                ax = axes[i, j]
                hs = stages[stage][region]
                order = [s for s in hs if s not in signal] + [s for s in hs if s in signal]
                mplhep.histplot([hs[s] for s in order], label=order, stack=True,
                                histtype="fill", ax=ax)
                if data is not None:
                    d = data[stage][region]
                    mplhep.histplot(d.values(), d.axes[0].edges, yerr=np.sqrt(d.values()),
                                    histtype="errorbar", color="black", label="pseudodata",
                                    ax=ax)
                ax.set_title(f"{region}, {stage} cuts", fontsize=16)
                ax.set_ylabel("events / bin")
                ax.set_xlabel(hs[order[0]].axes[0].label or "observable")
                ax.legend(fontsize=12)
        fig.subplots_adjust(wspace=0.35, hspace=0.35)
        _save(fig, path)


def sensitivity(sens: dict[str, dict[str, float]], path: Path) -> None:
    """∂objective/∂θ per parameter, split into the contributions of each region/sample."""
    params = list(sens)
    keys = list(next(iter(sens.values()))) if params else []
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(5 * max(1, len(params)), 5))
        axes = fig.subplots(1, max(1, len(params)), squeeze=False)
        for ax, p in zip(axes[0], params, strict=False):
            vals = [sens[p][k] for k in keys]
            ax.barh(keys, vals, color=["tab:red" if v < 0 else "tab:blue" for v in vals])
            ax.axvline(0, color="black", lw=0.8)
            ax.set_title(f"∂objective/∂{p}", fontsize=13)
            ax.tick_params(labelsize=11)
        _save(fig, path)
