"""The files of a run directory besides ``results.json``: the workspace, the ROOT histograms,
the figures and the tables, all from numbers the run has already evaluated."""

from __future__ import annotations

from pathlib import Path

from diffana import plot, report, tables


def write(ana, out_dir: Path, hists: dict, flows: dict, final_yields: dict, sensitivity: dict,
          params: dict) -> None:
    """Write ``workspace.json`` (the final soft yields, the pseudodata as observations),
    ``histograms.root``, ``objective_history.png``, ``histograms.png`` (with the hard
    templates' systematic band), ``sensitivity.png``/``.csv`` and the yield and cutflow tables.

    Args:
        ana: the :class:`~diffana.analysis.Analysis` of the run.
        hists: ``{stage: {region: {sample: hist.Hist}}}``, the hard histograms (``initial``,
            ``final``).
        flows: ``{stage: cutflow}`` (:func:`diffana.tables.cutflow`).
        final_yields: the soft yields at the final parameters.
        sensitivity: ``{param: {template: ∂objective/∂θ}}`` (empty: none trainable).
        params: ``{stage: parameters}``.
    """
    cfg = ana.cfg
    data = {stage: ana.pseudodata(h) for stage, h in hists.items()}
    observations = ({r: h.values() for r, h in data["final"].items()}
                    if data["final"] is not None else None)
    report.write_json(out_dir / "workspace.json", ana.workspace(final_yields, observations))
    axis_labels = {r: plot.axis_label(cfg, r) for r in cfg.regions}
    report.write_root_histograms(out_dir / "histograms.root", hists, data, axis_labels)
    plot.history(report.read_history(out_dir / "history.csv"), cfg.objective.kind,
                 out_dir / "objective_history.png",
                 {n: cfg.parameters[n].bounds for n in ana.trainable}, plot.parameter_units(cfg))
    nominal = {stage: {r: {s: h for s, h in hs.items() if s in cfg.nominal_samples}
                       for r, hs in regions.items()} for stage, regions in hists.items()}
    band = {stage: plot.systematic_band(ana.workspace(ana.hard_yields(p, hists[stage])))
            for stage, p in params.items()}  # the hard templates'
    plot.templates(nominal, out_dir / "histograms.png", cfg,
                   data if data["final"] is not None else None, band)
    if sensitivity:
        plot.sensitivity(sensitivity, out_dir / "sensitivity.png", cfg)
        report.write_sensitivity_csv(out_dir / report.SENSITIVITY_CSV, sensitivity, cfg)
    tables.write(out_dir, hists, flows)


def summary(results: dict, cfg, out_dir: Path) -> str:
    """What a run prints at its end (one screen): the objective and the parameters, the
    sensitivity's leading groups, the warnings, the nominal samples' hard-cut yields and where
    the run directory is."""
    return "\n".join([report.summary(results, cfg), tables.summary(out_dir, cfg.nominal_samples)])
