"""``diffana run``: optimise the trainable cuts of a configuration and write a run directory.

Example:
    >>> from diffana.run import run                              # doctest: +SKIP
    >>> results = run("configs/ttbar_vs_wjets.yaml", steps=20, out="runs/quick")  # doctest: +SKIP
    >>> results["hard"]["objective_final"]                       # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffana import config as configmod
from diffana import plot, report
from diffana.analysis import WEIGHTED, Analysis
from diffana.exceptions import DiffanaError
from diffana.optimise import optimise


def _floats(params: dict) -> dict[str, float]:
    return {k: float(v) for k, v in params.items()}


def run(
    config_path: str | Path,
    *,
    steps: int | None = None,
    out: str | Path | None = None,
    engine: str | None = None,
    seed: int | None = None,
    progress: bool = True,
    echo=print,
) -> dict:
    """Load, optimise, evaluate with hard cuts, and write the run directory.

    Returns the content of ``results.json``. ``results.json`` is written last, so a run
    directory without it is an unfinished run.
    """
    start = time.perf_counter()
    config_path = Path(config_path)
    cfg = configmod.load(config_path)
    updates: dict = {}
    if engine is not None:
        updates["engine"] = engine
    if seed is not None:
        updates["seed"] = seed
    if steps is not None:
        updates["optimiser"] = cfg.optimiser.model_copy(update={"steps": steps})
    cfg = cfg.model_copy(update=updates)

    out_dir = Path(out) if out else Path("runs") / (
        f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if (out_dir / "results.json").exists():
        (out_dir / "results.json").unlink()  # a rerun into the same directory starts over
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_atomic(out_dir / "config.resolved.yaml", configmod.dump(cfg))

    ana = Analysis(cfg, base_dir=config_path.parent, progress=progress)
    p0 = ana.initial_params()
    sign = -1.0 if ana.maximise else 1.0
    history = report.HistoryWriter(out_dir / "history.csv", ana.trainable)

    def on_step(step, loss, u):
        params = ana.from_unit(jnp.asarray(u), p0)
        history.row(step, sign * loss, [params[n] for n in ana.trainable])

    try:
        res = optimise(
            lambda u: ana.loss_and_grad(u, p0),
            ana.to_unit(p0),
            cfg.optimiser.name,
            cfg.optimiser.options,
            steps=cfg.optimiser.steps,
            tolerance=cfg.optimiser.tolerance,
            progress=progress,
            on_step=on_step,
            describe=lambda v: f"{sign * v:.5g}",
        )
    finally:
        history.close()
    p_final = ana.from_unit(res.params, p0)

    # the optimiser evaluated both already: step 0 and its last good step
    objective_initial = sign * res.history[0][1] if res.history else math.nan
    objective_final = sign * res.loss if res.history else math.nan
    hists = {"initial": ana.hard_histograms(p0), "final": ana.hard_histograms(p_final)}
    hard_initial = ana.hard_objective(p0, hists["initial"])
    hard_final = ana.hard_objective(p_final, hists["final"])
    if ana.trainable:  # the final yields and their Jacobian: one evaluation for both uses
        final = ana.yields_and_jacobian(p_final)
        final_yields, sensitivity = final[0], ana.sensitivity(p_final, final)
    else:
        final_yields, sensitivity = ana.yields(p_final), {}

    results = {
        "config": cfg.name,
        "config_file": str(config_path),
        "engine": ana.engine,
        "objective": cfg.objective.kind,
        "maximise": ana.maximise,
        "objective_initial": objective_initial,
        "objective_final": objective_final,
        "params_initial": _floats(p0),
        "params_final": _floats(p_final),
        "trainable": ana.trainable,
        "hard": {"objective_initial": hard_initial, "objective_final": hard_final},
        "steps_done": res.history[-1][0] if res.history else 0,
        "stopped": res.stopped,
        "n_events": {n: s.n_events for n, s in ana.samples.items()},
        "seed": cfg.seed,
        "compile_seconds": res.first_call_seconds,
        "sensitivity": sensitivity,
        "wall_seconds": 0.0,
    }
    if not all(math.isfinite(v) for v in (objective_initial, objective_final, hard_initial,
                                           hard_final)):
        results["warning"] = "non-finite objective value; see stopped"

    data = {stage: ana.pseudodata(h) for stage, h in hists.items()}
    observations = ({r: h.values() for r, h in data["final"].items()}
                    if data["final"] is not None else None)
    report.write_json(out_dir / "workspace.json", ana.workspace(final_yields, observations))
    report.write_root_histograms(out_dir / "histograms.root", hists)
    plot.history(report.read_history(out_dir / "history.csv"), cfg.objective.kind,
                 out_dir / "objective_history.png")
    nominal = {stage: {r: {s: h for s, h in hs.items() if s in cfg.nominal_samples}
                       for r, hs in regions.items()} for stage, regions in hists.items()}
    plot.templates(nominal, out_dir / "histograms.png", cfg.model.signal,
                   data if data["final"] is not None else None)
    if sensitivity:
        plot.sensitivity(sensitivity, out_dir / "sensitivity.png")
    results["wall_seconds"] = time.perf_counter() - start
    report.write_json(out_dir / "results.json", results)
    if echo is not None:
        echo(report.summary(results))
        echo(f"run directory: {out_dir}")
    if res.stopped.startswith("non-finite"):
        raise DiffanaError(f"{config_path}: optimisation stopped: {res.stopped}; the last good "
                           f"parameters are in {out_dir / 'results.json'}")
    return results


def validate(config_path: str | Path) -> str:
    """Check a configuration and its inputs without running it; a one-line summary.

    Checks the schema and cross-references, then opens every input file that exists or
    should exist (not events still to be generated) and checks its tree and branches.
    """
    from diffana import io, ragged
    from diffana.generate import generated_dir

    config_path = Path(config_path)
    cfg = configmod.load(config_path)
    plan = ragged.plan(cfg)
    generated, pending = None, False
    if cfg.generate is not None:
        g = cfg.generate
        generated = generated_dir(g.kind, g.events, g.seed)
        pending = not (generated / ".complete").exists()
    checked = 0
    for name, sample in cfg.samples.items():
        uses_generated = any("{generated}" in f for f in sample.files)
        if uses_generated and pending:
            continue
        branches = plan.branches + (["genWeight"] if sample.normalisation in WEIGHTED else [])
        for f in sample.files:
            path = configmod.resolve_path(f, config_path.parent, generated)
            io.check_branches(path, sample.tree or cfg.tree, branches)
            checked += 1
    note = "; events are generated on first run" if pending else ""
    return (f"{config_path}: valid ({len(cfg.samples)} samples, {len(cfg.regions)} regions, "
            f"{sum(p.trainable for p in cfg.parameters.values())} trainable parameters, "
            f"{checked} input files checked{note})")


def grid_scan(ana: Analysis, points: int | dict[str, np.ndarray], progress: bool = False):
    """Brute-force scan of the hard-cut objective over a grid of the trainable parameters.

    Returns ``(best_params, best_value, values)`` with ``values`` shaped like the grid.
    """
    grids = points if isinstance(points, dict) else {
        n: np.linspace(*ana.cfg.parameters[n].bounds, points) for n in ana.trainable}
    names = list(grids)
    mesh = np.meshgrid(*[grids[n] for n in names], indexing="ij")
    values = np.full(mesh[0].shape, np.nan)
    p0 = ana.initial_params()
    best, best_value = None, -math.inf if ana.maximise else math.inf
    for idx in tqdm(list(np.ndindex(values.shape)), disable=not progress, desc="grid scan"):
        params = dict(p0)
        params.update({n: jnp.asarray(mesh[k][idx]) for k, n in enumerate(names)})
        v = ana.hard_objective(params)
        values[idx] = v
        if math.isfinite(v) and (v > best_value if ana.maximise else v < best_value):
            best, best_value = params, v
    return best, best_value, values
