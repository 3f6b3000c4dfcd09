"""The files of a run directory besides ``results.json``: the workspace, the ROOT histograms,
the figures and the tables, all from numbers the run has already evaluated."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from diffana import plot, report, tables


class Drawing:
    """Figures drawn one after another in one thread (matplotlib's style is global state),
    while the caller computes."""

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool, self._drawn = pool, []

    def submit(self, draw, *args) -> None:
        """Draw ``draw(*args)`` after the figures submitted before it."""
        self._drawn.append(self._pool.submit(draw, *args))

    def wait(self) -> None:
        """Wait for every figure; re-raise what drawing one raised."""
        for future in self._drawn:
            future.result()


@contextmanager
def drawing(ana, out_dir: Path, hists: dict, params: dict):
    """Start drawing ``objective_history.png`` and ``histograms.png`` (with their PDFs) in a
    thread while the block runs (e.g. the sensitivity: XLA compiles and computes without the
    GIL); the block's end waits for them, and re-raises what drawing raised. Yields the
    :class:`Drawing`, for the figures the block can only draw later (the sensitivity).

    Args:
        ana: the :class:`~diffana.analysis.Analysis` of the run.
        hists: ``{stage: {region: {sample: hist.Hist}}}``, the hard histograms (``initial``,
            ``final``).
        params: ``{stage: parameters}``.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="diffana-figures") as pool:
        figures = Drawing(pool)
        figures.submit(_figures, ana, out_dir, hists, params)
        yield figures
        figures.wait()


def _figures(ana, out_dir: Path, hists: dict, params: dict) -> None:
    cfg = ana.cfg
    plot.history(report.read_history(out_dir / "history.csv"), cfg.objective.kind,
                 out_dir / "objective_history.png",
                 {n: cfg.parameters[n].bounds for n in ana.trainable}, plot.parameter_units(cfg))
    data = {stage: ana.pseudodata(h) for stage, h in hists.items()}
    nominal = {stage: {r: {s: h for s, h in hs.items() if s in cfg.nominal_samples}
                       for r, hs in regions.items()} for stage, regions in hists.items()}
    band = {stage: plot.systematic_band(ana.workspace(ana.hard_yields(p, hists[stage])))
            for stage, p in params.items()}  # the hard templates'
    plot.templates(nominal, out_dir / "histograms.png", cfg,
                   data if data["final"] is not None else None, band)


def write(ana, out_dir: Path, hists: dict, flows: dict, final_yields: dict,
          sensitivity: dict, figures: Drawing) -> None:
    """Write ``workspace.json`` (the final soft yields, the pseudodata as observations),
    ``histograms.root``, ``sensitivity.csv``, the yield and cutflow tables, and have
    ``figures`` draw ``sensitivity.png`` meanwhile (the other figures: :func:`drawing`).

    Args:
        ana: the :class:`~diffana.analysis.Analysis` of the run.
        hists: ``{stage: {region: {sample: hist.Hist}}}``, the hard histograms.
        flows: ``{stage: cutflow}`` (:func:`diffana.tables.cutflow`).
        final_yields: the soft yields at the final parameters.
        sensitivity: ``{param: {template: ∂objective/∂θ}}`` (empty: none trainable).
        figures: the :class:`Drawing` of :func:`drawing`.
    """
    cfg = ana.cfg
    if sensitivity:
        figures.submit(plot.sensitivity, sensitivity, out_dir / "sensitivity.png", cfg)
    data = {stage: ana.pseudodata(h) for stage, h in hists.items()}
    observations = ({r: h.values() for r, h in data["final"].items()}
                    if data["final"] is not None else None)
    report.write_json(out_dir / "workspace.json", ana.workspace(final_yields, observations))
    axis_labels = {r: plot.axis_label(cfg, r) for r in cfg.regions}
    report.write_root_histograms(out_dir / "histograms.root", hists, data, axis_labels)
    if sensitivity:
        report.write_sensitivity_csv(out_dir / report.SENSITIVITY_CSV, sensitivity, cfg)
    tables.write(out_dir, hists, flows)


def summary(results: dict, cfg, out_dir: Path) -> str:
    """What a run prints at its end (one screen): the objective and the parameters, the
    sensitivity's leading groups, the warnings, the nominal samples' hard-cut yields and where
    the run directory is."""
    return "\n".join([report.summary(results, cfg), tables.summary(out_dir, cfg.nominal_samples)])
