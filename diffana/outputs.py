"""The files of a run directory besides ``results.json``: the workspace, the ROOT histograms,
the figures and the tables, all from numbers the run has already evaluated, and the inference
of the final hard-cut workspace (``inference.json``, computed in a thread of its own)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from queue import SimpleQueue

from diffana import guards, inference, plot, plot_inference, report, tables
from diffana.exceptions import DiffanaError
from diffana.figure_process import FigureProcess, ProcessGone
from diffana.log import logger

#: The pyhf workspace of the final cuts with hard cuts (what ``inference.json`` is of).
HARD_WORKSPACE = "workspace_hard.json"
#: The lines of the summary a run prints at its end, where it can (one screen).
SCREEN_LINES = 30


class Drawing:
    """Figures drawn while the caller computes, and the inference computed meanwhile
    (``inference``: its future, ``None`` when the configuration has ``inference: false``).

    ``pool`` has a thread per process of ``processes`` (or one, without processes). The
    figures are taken in the order they were submitted, each by the next thread free, and
    drawn in a process free at that moment (:mod:`diffana.figure_process`: drawing there does
    not hold this process's GIL) where it can call the function, else here; here, one figure
    at a time (matplotlib's style is global state)."""

    def __init__(self, pool: ThreadPoolExecutor, processes: list[FigureProcess] | tuple = ()):
        self._pool = pool
        self._free: SimpleQueue = SimpleQueue()  # as many as the pool has threads, or none
        for process in processes:
            self._free.put(process)
        self._processes = len(processes)
        self._drawn: list[Future] = []
        self.inference: Future | None = None
        self.data: dict = {}  # {stage: pseudodata histograms or None}, once for every file

    def submit(self, draw, *args) -> None:
        """Draw ``draw(*args)`` once a thread is free (beside the others' figures)."""
        self._drawn.append(self._pool.submit(self._draw, draw, *args))

    def _draw(self, draw, *args) -> None:
        process = self._free.get() if self._processes else None  # one free per thread
        try:
            if process is not None and process.takes(draw):
                try:
                    process.call(draw, *args)
                    return
                except ProcessGone as err:  # drawn here instead: the figure is not lost
                    logger.debug("%s; drawn in this process instead", err)
            with _HERE:
                draw(*args)
        finally:
            if process is not None:
                self._free.put(process)

    def wait(self) -> None:
        """Wait for every figure; re-raise what drawing one raised."""
        for future in self._drawn:
            future.result()


#: Held while a figure is drawn in this process.
_HERE = threading.Lock()


@contextmanager
def drawing(ana, out_dir: Path, hists: dict, final_params: dict, initial_workspace: dict,
            processes: list[FigureProcess] | tuple = ()):
    """Start drawing ``histograms.png`` and ``objective_history.png`` (with their PDFs) while
    the block runs (e.g. the sensitivity), in ``processes`` (one figure at a time each,
    :class:`~diffana.figure_process.FigureProcess`; none: in one thread); the block's end
    waits for them, and re-raises what drawing raised. Yields the :class:`Drawing`, for the
    figures the block can only draw later (the sensitivity).

    Meanwhile, write ``workspace_hard.json`` (:func:`hard_workspace` of the final cuts) and,
    with ``inference.enabled``, start its inference in a thread of its own
    (:func:`add_inference` waits for it). Its numbers do not depend on the threads.

    Args:
        ana: the :class:`~diffana.analysis.Analysis` of the run.
        hists: ``{stage: {region: {sample: hist.Hist}}}``, the hard histograms (``initial``,
            ``final``).
        final_params: the parameters of the final cuts.
        initial_workspace: :func:`hard_workspace` at the initial cuts (its templates'
            systematic band).
    """
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max(1, len(processes)),
                                                      thread_name_prefix="diffana-figures"))
        computing = stack.enter_context(
            ThreadPoolExecutor(1, thread_name_prefix="diffana-inference"))
        figures = Drawing(pool, processes)
        figures.data = {stage: ana.pseudodata(h) for stage, h in hists.items()}
        workspace = hard_workspace(ana, hists["final"], final_params, figures.data["final"])
        # the templates first: the figure that takes longest
        _submit_templates(figures, ana.cfg, out_dir, hists,
                          {"initial": initial_workspace, "final": workspace})
        if ana.cfg.inference.enabled:  # compiles and fits while the sensitivity is computed
            figures.inference = computing.submit(_infer, ana.cfg, workspace, out_dir)
        report.write_json(out_dir / HARD_WORKSPACE, workspace)
        figures.submit(plot.history, report.read_history(out_dir / "history.csv"),
                       ana.cfg.objective.kind, out_dir / "objective_history.png",
                       {n: ana.cfg.parameters[n].bounds for n in ana.trainable},
                       plot.parameter_units(ana.cfg))
        yield figures
        figures.wait()


def hard_workspace(ana, hists: dict, params: dict, data: dict | None) -> dict:
    """The pyhf workspace of the hard histograms ``hists`` (filled at ``params``), with their
    pseudodata ``data`` (:meth:`~diffana.analysis.Analysis.pseudodata`) as observations (None,
    without ``model.pseudodata``: the Asimov data)."""
    observations = {r: h.values() for r, h in data.items()} if data is not None else None
    return ana.workspace(ana.hard_yields(params, hists), observations)


def _infer(cfg, workspace: dict, out_dir: Path) -> tuple[dict, dict, float]:
    """``inference.json`` of ``workspace``: ``(result, details, seconds)``."""
    start = time.perf_counter()
    details: dict = {}
    result = inference.infer(workspace, details=details, **inference.settings(cfg))
    inference.write_json(result, out_dir)
    return result, details, time.perf_counter() - start


def add_inference(results: dict, ana, out_dir: Path, figures: Drawing) -> None:
    """Wait for the inference of :func:`drawing`, have ``figures`` draw its figures, and add
    it to ``results``: ``inference`` (the file, the workspace, the numbers quoted and its
    seconds; ``None`` without), and a warning (logged at once) per warning it has. Its
    seconds are also the phase ``inference_s`` (in a thread: besides the others)."""
    results["inference"] = None
    if figures.inference is None:
        return
    try:
        result, details, seconds = figures.inference.result()
    except (DiffanaError, ValueError, ArithmeticError) as err:  # the run's results stand
        found = [guards.Flag("inference-failed", f"no inference.json: {err}", HARD_WORKSPACE)]
    else:
        if ana.cfg.inference.plots:  # each by the next figure process free, the correlation
            # matrix (the longest to draw) first
            for draw, *args in reversed(plot_inference.drawings(result, details, out_dir)):
                figures.submit(draw, *args)
        results["inference"] = {**inference.digest(result), "workspace": HARD_WORKSPACE,
                                "seconds": seconds}
        ana.phases.seconds["inference_s"] = seconds
        found = [guards.Flag("inference", w, inference.FILE) for w in result["warnings"]]
    for flag in found:
        logger.warning(guards.line(flag))
    results["warnings"] += [flag._asdict() for flag in found]


def _submit_templates(figures: Drawing, cfg, out_dir: Path, hists: dict,
                      workspaces: dict) -> None:
    """Have ``figures`` draw the templates of the nominal samples, with the systematic band
    of the hard-cut ``workspaces`` (``{stage: workspace}``; their observations do not
    matter)."""
    nominal = {stage: {r: {s: h for s, h in hs.items() if s in cfg.nominal_samples}
                       for r, hs in regions.items()} for stage, regions in hists.items()}
    band = {stage: plot.systematic_band(workspaces[stage]) for stage in hists}
    data = figures.data
    figures.submit(plot.templates, nominal, out_dir / "histograms.png", cfg,
                   data if data["final"] is not None else None, band)


def write(ana, out_dir: Path, hists: dict, flows: dict, final_yields: dict,
          sensitivity: dict, figures: Drawing, results: dict) -> None:
    """Write ``workspace.json`` (the final soft yields, the pseudodata as observations),
    ``histograms.root``, ``sensitivity.csv``, the yield and cutflow tables, and have
    ``figures`` draw ``sensitivity.png`` meanwhile (the other figures: :func:`drawing`);
    then add the inference to ``results`` (:func:`add_inference`).

    Args:
        ana: the :class:`~diffana.analysis.Analysis` of the run.
        hists: ``{stage: {region: {sample: hist.Hist}}}``, the hard histograms.
        flows: ``{stage: cutflow}`` (:func:`diffana.tables.cutflow`).
        final_yields: the soft yields at the final parameters.
        sensitivity: ``{param: {template: ∂objective/∂θ}}`` (empty: none trainable).
        figures: the :class:`Drawing` of :func:`drawing`.
        results: ``results.json``'s content, its ``warnings`` included.
    """
    cfg = ana.cfg
    if sensitivity:
        figures.submit(plot.sensitivity, sensitivity, out_dir / "sensitivity.png", cfg)
    data = figures.data
    observations = ({r: h.values() for r, h in data["final"].items()}
                    if data["final"] is not None else None)
    report.write_json(out_dir / "workspace.json", ana.workspace(final_yields, observations))
    axis_labels = {r: plot.axis_label(cfg, r) for r in cfg.regions}
    report.write_root_histograms(out_dir / "histograms.root", hists, data, axis_labels)
    if sensitivity:
        report.write_sensitivity_csv(out_dir / report.SENSITIVITY_CSV, sensitivity, cfg)
    tables.write(out_dir, hists, flows)
    add_inference(results, ana, out_dir, figures)


def with_inference(cfg, enabled: bool | None):
    """``cfg`` with ``inference.enabled`` set to ``enabled`` (``None``: ``cfg``)."""
    if enabled is None:
        return cfg
    return cfg.model_copy(update={"inference": cfg.inference.model_copy(
        update={"enabled": enabled})})


def summary(results: dict, cfg, out_dir: Path) -> str:
    """What a run prints at its end (one screen, :data:`SCREEN_LINES`): the objective and the
    parameters, the sensitivity's leading groups, the warnings, the inference's limits and
    significance, the nominal samples' hard-cut yields and where the run directory is. Where
    the inference's two lines would not fit otherwise, the sensitivity shows only each
    grouping's leading entry and the rest (``sensitivity.csv`` has every row)."""
    quoted = inference.headline(results["inference"]) if results.get("inference") else []
    yields = tables.summary(out_dir, cfg.nominal_samples)
    for top in (2, 1):
        text = "\n".join([report.summary(results, cfg, top), *quoted, yields])
        if len(text.splitlines()) <= SCREEN_LINES:
            break
    return text
