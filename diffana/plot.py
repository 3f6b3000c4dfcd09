"""Plots for a run directory (mplhep CMS style): history, templates, sensitivity.

Each figure is written as PNG and PDF. The axis labels come from the configuration
(:func:`axis_label`, :func:`parameter_units`), the experiment label from its luminosity and
``com_energy``.
"""

from __future__ import annotations

import io
from pathlib import Path

import mplhep
import numpy as np
from matplotlib import rc_context, rcParams, style
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from diffana import breakdown, files

# Figures are made with matplotlib's object API (Figure, not pyplot): they render to files
# with the Agg canvas whatever backend the user's session has, and diffana sets no global
# matplotlib state.

#: units of the fields and observables diffana knows (GeV: momenta, energies, masses)
UNITS = {"pt": "GeV", "mass": "GeV", "m": "GeV", "energy": "GeV", "e": "GeV", "ht": "GeV"}
#: how a field is written on an axis
SYMBOLS = {"pt": "$p_{T}$", "eta": r"$\eta$", "phi": r"$\phi$", "mass": "$m$", "m": "$m$"}


def _with_unit(text: str, unit: str | None) -> str:
    return f"{text} [{unit}]" if unit else text


def axis_label(cfg, region: str) -> str:
    """The x-axis label of a region's observable: its ``label``, else one from its kind and
    field (``sum`` of ``pt``: ``$H_{T}$ [GeV]``), else its name.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> obs = {"ht": NS(kind="sum", field="pt", collection="jets", options={}, label=None)}
        >>> axis_label(NS(observables=obs, regions={"SR": NS(observable="ht")}), "SR")
        '$H_{T}$ [GeV]'
    """
    name = cfg.regions[region].observable
    obs = cfg.observables.get(name)
    if obs is None:
        return name
    if obs.label:
        return obs.label
    field, unit = obs.field, UNITS.get(obs.field or "")
    symbol = SYMBOLS.get(field or "", field)
    if obs.kind == "sum" and field == "pt":
        return _with_unit("$H_{T}$", unit)
    if obs.kind == "leading" and field is not None:
        return _with_unit(f"leading {obs.collection} {symbol}", unit)
    if obs.kind == "nth" and field is not None:
        return _with_unit(f"{obs.collection} #{obs.options.get('index', 0) + 1} {symbol}", unit)
    if obs.kind == "count":
        return f"number of {obs.collection}"
    return _with_unit(name, UNITS.get(name))


def parameter_units(cfg) -> dict[str, str]:
    """``{parameter: unit}`` for the parameters cut on a field or observable of known unit."""
    units: dict[str, str] = {}

    def note(threshold, unit: str | None) -> None:
        if isinstance(threshold, str) and unit:
            units.setdefault(threshold, unit)

    for collection in cfg.objects.values():
        for cut in collection.cuts:
            for threshold in (cut.above, cut.below):
                note(threshold, UNITS.get(cut.field))

    def requirements(reqs) -> None:
        for req in reqs:
            if req.observable is not None:
                obs = cfg.observables.get(req.observable)
                unit = UNITS.get(obs.field or "") if obs is not None else None
                for threshold in (req.above, req.below):
                    note(threshold, unit)
            requirements(req.all or [])
            requirements(req.any or [])

    requirements(cfg.selection)
    for region in cfg.regions.values():
        requirements(region.selection)
    return units


def experiment_label(ax, cfg, fontsize: float = 16, offset: bool = True) -> None:
    """The CMS-style label: "Simulation" (the model and pseudodata are simulated; "Open Data"
    when the events are read from files), the luminosity in fb⁻¹ and ``com_energy``.

    ``offset``: the y axis may show an offset or exponent (``×10³``) the label must clear;
    mplhep draws the whole figure to measure it, so a caller that knows there is none says
    so."""
    parts = []
    if cfg.luminosity is not None:  # pb^-1
        lumi, unit = ((cfg.luminosity / 1000, "fb") if cfg.luminosity >= 100
                      else (cfg.luminosity, "pb"))
        parts.append(f"{lumi:.3g} {unit}$^{{-1}}$")
    if cfg.com_energy is not None:
        parts.append(f"({cfg.com_energy:g} TeV)")
    mplhep.cms.label(text="" if cfg.generate is not None else "Open Data", data=False,
                     rlabel=" ".join(parts), ax=ax, fontsize=fontsize, scilocator_adjust=offset)


#: The figures' resolution as PNG (dots per inch).
DPI = 120


def save(fig, path: Path, laid_out: bool = False) -> None:
    """``path`` (PNG) and the same figure as PDF beside it, laid out once: a figure with a
    layout engine (constrained) is laid out once, for both files; one without gets its tight
    bounding box measured once, for both files (where ``bbox_inches="tight"`` draws each
    file twice: once to measure, once to write); ``laid_out``: the figure is saved as it is.
    Call it inside the figure's style context (``savefig.pad_inches``)."""
    bbox, fig.dpi = None, DPI  # measured at the PNG's resolution: its pixels are as before
    if fig.get_layout_engine() is not None:
        _lay_out(fig)
    elif not laid_out:
        bbox = fig.get_tightbbox().padded(rcParams["savefig.pad_inches"])
    for target in (path, path.with_suffix(".pdf")):
        with files.replacing(target) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches=bbox, format=target.suffix[1:])


def _lay_out(fig) -> None:
    """Lay ``fig`` out once with its layout engine, at the PNG's resolution, and keep that
    layout: no engine after it (with one, savefig would lay the figure out and also walk it
    whole, drawing disabled, before each file; a placeholder engine, "none", still has it
    walk the figure)."""
    fig.dpi = DPI
    fig.get_layout_engine().execute(fig)
    with rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)


def warm_up() -> None:
    """Draw a small labelled figure in the figures' style to PNG and PDF, in memory: the
    fonts, mathtext and both backends are loaded before the first figure (a figure process
    does it while the run optimises; the first figure of a process took 0.1-0.2 s longer)."""
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(3, 3))
        ax = fig.subplots()
        ax.plot([0.0, 1.0], [0.0, 1.0], label="x")
        ax.set_xlabel(_with_unit(SYMBOLS["pt"], "GeV"))
        ax.legend()
        mplhep.cms.label(text="", data=False, rlabel="1 fb$^{-1}$", ax=ax,
                         scilocator_adjust=False)
        for fmt in ("png", "pdf"):
            fig.savefig(io.BytesIO(), format=fmt, dpi=DPI)


def history(hist: dict[str, np.ndarray], objective: str, path: Path,
            bounds: dict[str, tuple[float, float]] | None = None,
            units: dict[str, str] | None = None) -> None:
    """The objective and each trainable parameter against the optimiser step, each parameter
    with its ``bounds`` (dashed) and its unit."""
    params = [k for k in hist if k not in ("step", "objective")]
    bounds, units = bounds or {}, units or {}
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8, 2.6 * (1 + len(params))))
        axes = fig.subplots(1 + len(params), 1, sharex=True, squeeze=False)
        axes = axes[:, 0]
        axes[0].plot(hist["step"], hist["objective"], color="black")
        axes[0].set_ylabel(objective.replace("_", " "), fontsize=14)
        for ax, name in zip(axes[1:], params, strict=True):
            ax.plot(hist["step"], hist[name], color="tab:blue")
            for edge in bounds.get(name, ()):
                ax.axhline(edge, color="grey", ls="--", lw=1)
            if name in bounds:
                low, high = bounds[name]
                pad = 0.05 * (high - low)
                ax.set_ylim(low - pad, high + pad)
            ax.set_ylabel(_with_unit(name.replace("_", " "), units.get(name)), fontsize=14)
        axes[-1].set_xlabel("optimiser step")
        save(fig, path)


def systematic_band(workspace: dict) -> dict[str, np.ndarray]:
    """``{region: σ_syst}``: the systematic uncertainty of the total MC per bin from a pyhf
    workspace's ``normsys``, ``histosys`` and ``lumi`` modifiers. The shifts of one
    parameter add over samples (they are correlated), up and down are averaged in size,
    and the parameters add in quadrature; the POI, ``staterror`` and other modifiers are left
    out.

    Example:
        >>> ws = {"measurements": [{"config": {"parameters": []}}], "channels": [{"name": "SR",
        ...       "samples": [{"data": [10.0, 20.0], "modifiers": [{"name": "n",
        ...       "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]}]}]}
        >>> systematic_band(ws)["SR"].round(6).tolist()
        [1.0, 2.0]
    """
    sigmas = {p["name"]: p["sigmas"][0] for m in workspace["measurements"]
              for p in m["config"]["parameters"] if "sigmas" in p}
    band = {}
    for channel in workspace["channels"]:
        shifts: dict[str, np.ndarray] = {}
        for sample in channel["samples"]:
            nominal = np.asarray(sample["data"], dtype=np.float64)
            for mod in sample["modifiers"]:
                data, kind = mod["data"], mod["type"]
                if kind == "normsys":
                    up, down = nominal * (data["hi"] - 1), nominal * (data["lo"] - 1)
                elif kind == "histosys":
                    up = np.asarray(data["hi_data"]) - nominal
                    down = np.asarray(data["lo_data"]) - nominal
                elif kind == "lumi" and mod["name"] in sigmas:
                    up = down = nominal * sigmas[mod["name"]]
                else:
                    continue
                size = (np.abs(up) + np.abs(down)) / 2
                shifts[mod["name"]] = shifts.get(mod["name"], 0.0) + np.sign(up) * size
        total = sum((s**2 for s in shifts.values()), start=np.zeros(len(nominal)))
        band[channel["name"]] = np.sqrt(total)
    return band


def ratio_range(ratio, errors, band) -> tuple[float, float]:
    """A data/MC panel's y range, symmetric about 1: wide enough for every point with its
    error bar and the MC band, in steps of 0.1, between ±0.2 and ±1 (bins without MC or data
    are left out)."""
    reach = np.concatenate([np.abs(np.asarray(ratio) - 1) + np.asarray(errors),
                            np.asarray(band)])
    reach = reach[np.isfinite(reach)]
    half = float(np.clip(np.ceil(10 * 1.1 * reach.max()) / 10, 0.2, 1.0)) if reach.size else 0.5
    return 1 - half, 1 + half


def templates(stages: dict[str, dict], path: Path, cfg, data: dict[str, dict] | None = None,
              systematics: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    """Stacked hard-cut histograms per region (rows) before and after optimisation (columns),
    with the MC uncertainty band (statistical from Σw², ⊕ ``systematics[stage][region]``,
    :func:`systematic_band`), ``data[stage][region]`` (e.g. pseudodata) as points and a
    data/MC ratio panel when there are data."""
    stage_names = list(stages)
    regions = list(next(iter(stages.values())))
    signal = cfg.model.signal
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(9 * len(stage_names), (8.5 if data else 6.5) * len(regions)),
                     layout="constrained")
        cells = fig.add_gridspec(len(regions), len(stage_names))
        labelled = []  # the axes that get the experiment's label, once all are drawn
        for j, stage in enumerate(stage_names):
            for i, region in enumerate(regions):
                hs = stages[stage][region]
                order = [s for s in hs if s not in signal] + [s for s in hs if s in signal]
                names = [getattr(cfg.samples[s], "label", None) or s for s in order]
                if data is not None:
                    ax, rax = cells[i, j].subgridspec(2, 1, height_ratios=[3, 1]).subplots(
                        sharex=True)
                else:
                    ax, rax = fig.add_subplot(cells[i, j]), None
                edges = hs[order[0]].axes[0].edges
                mplhep.histplot([hs[s] for s in order], label=names, stack=True,
                                histtype="fill", ax=ax)
                total = sum(hs[s].values() for s in order)
                stat2 = sum(hs[s].variances() for s in order)
                syst = (systematics or {}).get(stage, {}).get(region)
                unc = np.sqrt(stat2 + (syst**2 if syst is not None else 0.0))
                what = r"stat. $\oplus$ syst." if syst is not None else "stat."
                ax.stairs(total + unc, edges, baseline=total - unc, fill=True, hatch="////",
                          facecolor="none", edgecolor="grey", lw=0, label=f"MC {what} unc.")
                if data is not None:
                    d = data[stage][region].values()
                    centres = (edges[1:] + edges[:-1]) / 2
                    ax.errorbar(centres, d, yerr=np.sqrt(d), fmt="o", color="black",
                                label="pseudodata" if cfg.model.pseudodata else "data")
                    safe = np.where(total > 0, total, np.nan)
                    rax.stairs(1 + unc / safe, edges, baseline=1 - unc / safe, fill=True,
                               hatch="////", facecolor="none", edgecolor="grey", lw=0)
                    rax.errorbar(centres, d / safe, yerr=np.sqrt(d) / safe, fmt="o",
                                 color="black")
                    rax.axhline(1, color="black", lw=0.8)
                    rax.set_ylim(*ratio_range(d / safe, np.sqrt(d) / safe, unc / safe))
                    rax.set_ylabel("data / MC", fontsize=14)
                    ax.set_xlabel("")
                (rax or ax).set_xlabel(axis_label(cfg, region))
                ax.set_ylabel("events / bin")
                ax.set_ylim(0, 1.45 * max(np.max(total + unc), 1e-9))
                ax.legend(fontsize=12, ncols=2, title=f"{region}, {stage} cuts",
                          title_fontsize=13, loc="upper right")
                labelled.append(ax)
        _label_laid_out(fig, labelled, cfg)
        save(fig, path, laid_out=True)


def _label_laid_out(fig, labelled: list, cfg) -> None:
    """Lay out ``fig`` (its layout engine, once) with the experiment's label on each axes of
    ``labelled``, placed in fractions of the laid-out axes, clearing an offset text (``×10³``)
    where the y axis has one; the figure keeps that layout and no engine.

    mplhep places a label's parts in fractions of the axes as they are. So the labels are
    first put in at the axes' size before the layout (the layout leaves them room: their
    size does not depend on where the axes are), then put in again on the laid-out axes,
    instead of laying the figure out a second time (0.25 s of the AGC's templates)."""
    fig.dpi = DPI  # the labels measured at the PNG's resolution, as the layout (:func:`save`)
    first = {ax: len(ax.texts) for ax in labelled}
    for ax in labelled:
        experiment_label(ax, cfg, offset=False)
    _lay_out(fig)  # and no engine: mplhep may draw the figure to measure an offset text
    for ax in labelled:
        for text in ax.texts[first[ax]:]:
            text.remove()
        ax.yaxis.get_tightbbox()  # its ticks at its place: the offset text, if any
        experiment_label(ax, cfg, offset=bool(ax.yaxis.get_offset_text().get_text()))


def sensitivity(sens: dict[str, dict[str, float]], path: Path, cfg=None, top: int = 8) -> None:
    """∂objective/∂θ per parameter (columns), summed by sample, region and systematic (rows:
    the ``top`` largest and the others as one bar); the y axis is shared along a row and the
    figure grows with its bars."""
    params = list(sens)
    rows = breakdown.contributions(sens, breakdown.origins(cfg) if cfg is not None else None)
    groups = {by: breakdown.leading(breakdown.aggregate(rows, by), top) for by in breakdown.BY}
    heights = [max(1, len(g)) for g in groups.values()]
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(4.5 * max(1, len(params)) + 3, 0.45 * sum(heights) + 2.5),
                     layout="constrained")
        axes = fig.subplots(len(groups), max(1, len(params)), sharey="row", squeeze=False,
                            gridspec_kw={"height_ratios": heights})
        for i, (by, ranked) in enumerate(groups.items()):
            names = [name for name, _ in ranked][::-1]  # the largest on top
            for j, p in enumerate(params):
                ax = axes[i, j]
                vals = [values[p] for _, values in ranked][::-1]
                ax.barh(names, vals, color=["tab:red" if v < 0 else "tab:blue" for v in vals])
                ax.yaxis.set_minor_locator(NullLocator())  # categories: no minor ticks
                ax.axvline(0, color="black", lw=0.8)
                ax.tick_params(labelsize=11)
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
                ax.xaxis.get_offset_text().set_fontsize(11)
                if i == 0:
                    ax.set_title(f"∂objective/∂{p}", fontsize=13)
                if j == 0:
                    ax.set_ylabel(f"by {by}", fontsize=13)
        save(fig, path)
