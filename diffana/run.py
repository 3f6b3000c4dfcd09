"""``diffana run``: optimise the trainable cuts of a configuration and write a run directory.

Example:
    >>> from diffana.run import run                              # doctest: +SKIP
    >>> results = run("configs/ttbar_vs_wjets.yaml", steps=20, out="runs/quick")  # doctest: +SKIP
    >>> results["hard"]["objective_final"]                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import signal
import time
from datetime import datetime
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import yaml
from tqdm.auto import tqdm

from diffana import checks, guards, learned, outputs, report, tables
from diffana import config as configmod
from diffana.alongside import Initial, at_initial_cuts
from diffana.analysis import Analysis
from diffana.diagnose import non_finite_stage
from diffana.events import changed_input
from diffana.exceptions import DiffanaError, InputChanged, NumericalError, ResumableError
from diffana.figure_process import FigureProcess
from diffana.log import Phases, logger
from diffana.optimise import Interrupted, Resume, group_settings, optimise
from diffana.plan import ParameterSpace
from diffana.signals import Signals

#: the phases timed in ``results.json`` (``timings``), besides ``total_s``
TIMINGS = ("generate_s", "read_s", "lower_s", "compile_s", "steps_s", "hard_s",
           "sensitivity_s", "outputs_s", "inference_s")


def _floats(params: dict) -> dict[str, float]:  # the scalars (a network's: parameters.npz)
    return {k: float(v) for k, v in params.items() if not isinstance(v, dict)}


def run(
    config_path: str | Path | None = None,
    *,
    steps: int | None = None,
    out: str | Path | None = None,
    engine: str | None = None,
    streaming: str | bool | None = None,
    seed: int | None = None,
    progress: bool = True,
    echo=None,
    resume: str | Path | None = None,
    executor: dict | None = None,
    force: bool = False,
    compilation_cache: bool | None = None,
    inference: bool | None = None,
) -> dict:
    """Load, optimise, evaluate with hard cuts, and write the run directory.

    Returns the content of ``results.json``. ``results.json`` is written last, so a run
    directory without it is an unfinished run. ``echo`` (e.g. ``print``) receives the
    summary; each phase and every physics warning, as it is found, goes to the ``diffana``
    logger (:mod:`diffana.log`), and ``results.json`` has each phase's seconds (``timings``).

    SIGINT (Ctrl-C) or SIGTERM writes ``checkpoint.npz`` into the run directory and raises
    :class:`diffana.optimise.Interrupted`; ``run(resume=run_dir)`` continues from it with the
    run directory's ``config.resolved.yaml`` and ends with the results (``results.json``,
    ``history.csv``, histograms) of a run that was never interrupted.

    Args:
        config_path: the YAML configuration (not with ``resume``).
        steps, engine, streaming, seed, inference: override ``optimiser.steps``, ``engine``,
            ``streaming`` (``true``, ``false``, ``auto``), ``seed``, ``inference.enabled``
            (not with ``resume``: an interrupted run continues as it was configured).
        out: the run directory (default ``runs/<name>-<timestamp>``; not with ``resume``).
        resume: the directory of an interrupted run to continue.
        executor: overrides ``executor`` (``{"kind": "dask", "address": ..., "workers": N}``);
            with ``resume`` too (where the steps run does not change the numbers).
        force: write into ``out`` even if it holds files diffana did not write (it touches
            none of them).
        compilation_cache: overrides ``compilation_cache`` (JAX's persistent compilation
            cache in ``$DIFFANA_CACHE/jax-compilation``); with ``resume`` too (it does not
            change the numbers).

    Raises:
        Interrupted: SIGINT or SIGTERM arrived (the checkpoint is written).
        NumericalError: the optimisation stopped at a NaN or inf (``results.json`` is written,
            with the last good parameters).
        DiffanaError: ``out`` holds files diffana did not write (without ``force``), or another
            run writes into it.
        OutputError: a file or directory cannot be written or created (the path, the reason).
    """
    with report.RunDirectory() as run_directory:  # locked until the run ends, however it ends
        return _run(config_path, steps=steps, out=out, engine=engine, streaming=streaming,
                    seed=seed, progress=progress, echo=echo, resume=resume, executor=executor,
                    force=force, compilation_cache=compilation_cache, inference=inference,
                    run_directory=run_directory)


def _run(config_path, *, steps, out, engine, streaming, seed, progress, echo, resume, executor,
         force, compilation_cache, inference, run_directory: report.RunDirectory) -> dict:
    start = time.perf_counter()
    if resume is not None:
        given = {"a configuration": config_path, "steps": steps, "out": out, "engine": engine,
                 "streaming": streaming, "seed": seed, "force": force or None,
                 "inference": inference}
        clash = [k for k, v in given.items() if v is not None]
        if clash:
            raise DiffanaError(f"--resume {resume}: continues the run as it was configured; "
                               f"drop {', '.join(clash)}")
        out_dir, config_file, base_dir, cfg, checkpoint, meta = _load_resume(
            run_directory.resume(Path(resume)))
        if compilation_cache is not None:
            cfg = cfg.model_copy(update={"compilation_cache": compilation_cache})
    else:
        config_file = Path(config_path)
        base_dir = config_file.parent
        cfg = configmod.load(config_file)
        updates: dict = {}
        if engine is not None:
            updates["engine"] = engine
        if streaming is not None:
            updates["streaming"] = {"true": True, "false": False}.get(streaming, streaming)
        if seed is not None:
            updates["seed"] = seed
        if compilation_cache is not None:
            updates["compilation_cache"] = compilation_cache
        if steps is not None:
            updates["optimiser"] = cfg.optimiser.model_copy(update={"steps": steps})
        cfg = outputs.with_inference(cfg.model_copy(update=updates), inference)
        if executor is not None:
            cfg = _with_executor(cfg, executor, config_file)
        out_dir = Path(out) if out else Path("runs") / (
            f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        run_directory.open(out_dir, force=force)  # a rerun starts over: no results.json yet
        report.write_atomic(out_dir / "config.resolved.yaml", configmod.dump(cfg, base_dir))
        checkpoint, meta = None, {"config_file": str(config_file),
                                  "base_dir": str(base_dir.resolve()),
                                  "resumed_from_steps": [], "wall_seconds": 0.0}
    logger.debug("configuration %s (base directory %s), run directory %s, engine %s, "
                 "executor %s", config_file, base_dir, out_dir, cfg.engine, cfg.executor.kind)
    meta.update(config_sha256=_sha256(out_dir / "config.resolved.yaml"), seed=cfg.seed,
                generate_seed=cfg.generate.seed if cfg.generate is not None else None,
                engine=cfg.engine, optimiser=cfg.optimiser.name,
                trainable=ParameterSpace.of(cfg).trainable)

    if resume is not None and executor is not None:
        cfg = _with_executor(cfg, executor, config_file)
    signals = Signals()
    ana = None
    phases = Phases()
    with signals.installed():
        try:
            ana = Analysis(cfg, base_dir=base_dir, progress=progress, source=str(config_file),
                           phases=phases)
            _check_inputs(ana, meta)
            res, results = _optimise_and_write(ana, cfg, out_dir, config_file, checkpoint,
                                               meta, start, progress, signals)
        except KeyboardInterrupt as err:
            signals.hold = True  # a second signal does not cut the checkpoint short
            if (out_dir / "results.json").exists():  # finished: nothing to continue
                (out_dir / report.CHECKPOINT).unlink(missing_ok=True)
                signum = getattr(err, "signum", signal.SIGINT)
                raise Interrupted(None, signum, f"interrupted by {signal.Signals(signum).name} "
                                  f"as the run finished; its results are in {out_dir}") from None
            # the optimiser's last completed update, or where this call started from
            where = (err.resume if isinstance(err, Interrupted) and err.resume is not None
                     else checkpoint)
            signum = getattr(err, "signum", signal.SIGINT)
            name = signal.Signals(signum).name
            meta["wall_seconds"] = meta["wall_seconds"] + time.perf_counter() - start
            report.write_checkpoint(out_dir / report.CHECKPOINT, where, {**meta, "signal": name})
            at = f"at step {where.step} of {cfg.optimiser.steps}" if where else "before step 0"
            raise Interrupted(where, signum, f"interrupted by {name} {at}; checkpoint written "
                              f"to {out_dir / report.CHECKPOINT}; continue with: diffana run "
                              f"--resume {out_dir}") from None
        except ResumableError as err:  # an input changed, the Dask scheduler was lost
            where = err.resume if err.resume is not None else checkpoint
            meta["wall_seconds"] = meta["wall_seconds"] + time.perf_counter() - start
            report.write_checkpoint(out_dir / report.CHECKPOINT, where, meta)
            at = f"at step {where.step} of {cfg.optimiser.steps}" if where else "before step 0"
            raise type(err)(f"{err}; stopped {at}, checkpoint written to "
                            f"{out_dir / report.CHECKPOINT}; continue with: diffana run "
                            f"--resume {out_dir}") from None
        finally:
            if ana is not None:
                ana.close()  # the Dask cluster or client, if any
    if echo is not None:
        echo(outputs.summary(results, cfg, out_dir))
    if res.stopped.startswith("non-finite"):
        raise NumericalError(f"{config_file}: optimisation stopped: {results['stopped']}; the "
                             f"last good parameters are in {out_dir / 'results.json'}")
    return results


def _optimise_and_write(ana: Analysis, cfg, out_dir: Path, config_file: Path | str,
                        checkpoint: Resume | None, meta: dict, start: float, progress: bool,
                        signals: Signals):
    """The optimisation, the hard-cut evaluation and the run directory's files.

    A signal during the evaluation and the files stops the run at ``signals.check()`` (the
    run is resumable from its last step) or, once ``results.json`` is written, after it."""
    p0 = ana.initial_params()
    sign = -1.0 if ana.maximise else 1.0

    def row(step, loss, u) -> tuple:  # a history.csv row
        params = ana.from_unit(jnp.asarray(u), p0)
        return step, sign * loss, [params[n] for n in ana.trainable]

    earlier = [row(*h) for h in checkpoint.history] if checkpoint is not None else []
    history = report.HistoryWriter(out_dir / "history.csv", ana.trainable, earlier)

    def first_gradient(grad) -> None:  # a parameter no cut uses: said at once
        for flag in guards.unused_parameters(np.asarray(grad)[:len(ana.trainable)],
                                             ana.trainable):
            logger.warning(guards.line(flag))

    initial = Initial(ana, p0)  # meanwhile, in a thread where the executor allows it
    # the figure processes: their imports meanwhile, too; closed however the run ends
    with FigureProcess.started() as painters:
        steps_start = time.perf_counter()
        try:
            res = optimise(
                lambda u: ana.loss_and_grad(u, p0),
                ana.to_unit(p0),
                cfg.optimiser.name,
                cfg.optimiser.options,
                steps=cfg.optimiser.steps,
                tolerance=cfg.optimiser.tolerance,
                progress=progress,
                on_step=lambda step, loss, u: (history.row(*row(step, loss, u)), signals.check()),
                describe=lambda v: f"{sign * v:.5g}",
                names=ana.space.unit_names,
                resume=checkpoint,
                box=ana.space.unit_box() if ana.space.groups else None,
                groups=group_settings(ana.space.group_slices(), cfg.optimiser),
                on_first_gradient=first_gradient if ana.trainable else None,
            )
        except BaseException:  # a signal or an error: the thread stops after its current call
            initial.stop()
            raise
        finally:
            history.close()
        ana.phases.seconds["compile_s"] = res.first_call_seconds
        ana.phases.seconds["steps_s"] = time.perf_counter() - steps_start - res.first_call_seconds
        try:
            with signals.deferred():
                results = _evaluate_and_write(ana, cfg, res, out_dir, config_file, meta, start, p0,
                                              sign, signals.check, initial, painters)
            signals.check()
        except KeyboardInterrupt as err:
            raise Interrupted(res.resume, getattr(err, "signum", signal.SIGINT)) from None
        except ResumableError as err:
            err.resume = res.resume
            raise
    return res, results


def _check_inputs(ana: Analysis, meta: dict) -> None:
    """Record the inputs' identities in ``meta``; on ``--resume``, they must be those the
    interrupted run recorded."""
    current = [i for r in ana.readers for i in r.inputs]
    recorded = meta.get("inputs")
    if recorded is not None and (why := changed_input(recorded, current)) is not None:
        raise InputChanged(why)
    meta["inputs"] = current


def _evaluate_and_write(ana: Analysis, cfg, res, out_dir: Path, config_file: Path | str,
                        meta: dict, start: float, p0: dict, sign: float,
                        stop_here=lambda: None, initial: Initial | None = None,
                        painters: list[FigureProcess] | tuple = ()) -> dict:
    """The hard-cut evaluation and the run directory's files, ``results.json`` last;
    ``stop_here()`` raises ``KeyboardInterrupt`` where stopping for a signal is safe;
    ``initial``: the evaluations at the initial cuts, if under way; ``painters``: the
    processes that draw the figures (none: a thread)."""
    p_final = ana.from_unit(res.params, p0)
    phases = ana.phases

    # the optimiser evaluated both already: step 0 and its last good step
    objective_initial = sign * res.history[0][1] if res.history else math.nan
    objective_final = sign * res.loss if res.history else math.nan
    with phases("hard_s", "hard-cut histograms, objective and cutflow, initial and final cuts"):
        before = (initial.wait() if initial is not None else {}) or at_initial_cuts(ana, p0)
        hists = {"initial": before["hists"], "final": ana.hard_histograms(p_final)}
        hard_initial = before["objective"]
        hard_final = ana.hard_objective(p_final, hists["final"])
        held_out = learned.held_out(ana, p0, p_final)  # hard_train beside hard, with split:
        flows = {"initial": before["cutflow"], "final": tables.cutflow(ana, p_final)}
    # the history and template figures are drawn meanwhile
    with outputs.drawing(ana, out_dir, hists, p_final, before["workspace"],
                         painters) as figures:
        with phases("sensitivity_s", "final yields and sensitivity"):
            # the final yields and their Jacobian: one evaluation for both uses (none for a
            # classifier's loss: it is not a function of the yields)
            if ana.trainable and not ana.objective_spec.of_events:
                final = ana.yields_and_jacobian(p_final)
                final_yields, sensitivity = final[0], ana.sensitivity(p_final, final)
            else:
                final_yields = ana.yields(p_final)  # a classifier's: says why there is none
                sensitivity = ana.sensitivity(p_final) if ana.trainable else {}
        stop_here()

        results = _results(ana, res, config_file, meta, p0, p_final,
                           (objective_initial, objective_final), (hard_initial, hard_final),
                           sensitivity)
        results.update(held_out)
        results.update(learned.write(ana, out_dir, p_final, res.gradient))  # a network's

        gradient0 = (None if not ana.trainable or res.first_gradient is None  # step 0, cuts
                     else res.first_gradient[:len(ana.trainable)])
        # the soft objective is of the training events: held against their hard objective
        hard = held_out.get("hard_train", {"objective_initial": hard_initial,
                                           "objective_final": hard_final})
        flags = guards.run_flags(cfg, hists, {"final": final_yields}, gradient0, p_final,
                                 {"initial": (objective_initial, hard["objective_initial"]),
                                  "final": (objective_final, hard["objective_final"])})
        if flows["final"] is None:
            flags.append(guards.Flag("cutflow-skipped", "no cutflow with the Dask executor (the "
                                     "events are on the workers)", tables.CUTFLOW))
        results["warnings"] = [f._asdict() for f in flags]
        for flag in flags:
            if flag.code != "parameter-unused":  # said after the first step
                logger.warning(guards.line(flag))

        with phases("outputs_s", "workspace, ROOT histograms, figures and tables"):
            outputs.write(ana, out_dir, hists, flows, final_yields, sensitivity, figures, results)
            figures.wait()
    stop_here()
    results["wall_seconds"] = meta["wall_seconds"] + time.perf_counter() - start
    # this process's phases (a resumed run: since it resumed), in seconds
    results["timings"] = {**{k: phases.seconds.get(k, 0.0) for k in TIMINGS},
                          "total_s": time.perf_counter() - start}
    report.write_json(out_dir / "results.json", results)  # last: the run is finished
    (out_dir / report.CHECKPOINT).unlink(missing_ok=True)
    return results


def _results(ana: Analysis, res, config_file, meta: dict, p0: dict, p_final: dict,
             objective: tuple, hard: tuple, sensitivity: dict) -> dict:
    """``results.json`` but its warnings, timings and wall time: ``objective`` and ``hard``
    are the soft and hard objectives ``(initial, final)``."""
    cfg = ana.cfg
    results = {
        "config": cfg.name,
        "config_file": str(config_file),
        "engine": ana.engine,
        # in memory or streamed, and why: {"streamed": bool, "why": str}
        "streaming": ana.streaming,
        # where the chunks were evaluated: local, or dask (and its scheduler)
        "executor": ("local" if cfg.executor.kind == "local" else
                     f"dask {cfg.executor.address or 'LocalCluster'}"),
        "objective": cfg.objective.kind,
        "maximise": ana.maximise,
        "objective_initial": objective[0],
        "objective_final": objective[1],
        "params_initial": _floats(p0),
        "params_final": _floats(p_final),
        "trainable": ana.trainable,
        "hard": {"objective_initial": hard[0], "objective_final": hard[1]},
        "steps_done": res.history[-1][0] if res.history else 0,
        "stopped": res.stopped,
        "n_events": {n: s.n_events for n, s in ana.samples.items()},
        # NaN/inf values read, and what nonfinite: drop removed (empty: none)
        "nonfinite": checks.summary(ana.readers),
        # every input file as read (path, size, modification time, UUID, entries)
        "inputs": meta["inputs"],
        "imports": configmod.imported_files(cfg, Path(meta["base_dir"])),
        "seed": cfg.seed,
        "compile_seconds": res.first_call_seconds,
        "sensitivity": sensitivity,
        "wall_seconds": 0.0,
    }
    if meta["resumed_from_steps"]:
        results["resumed_from_steps"] = meta["resumed_from_steps"]
    if res.non_finite_u is not None:
        bad = ana.from_unit(jnp.asarray(res.non_finite_u), p0)
        i = res.non_finite_param
        where = non_finite_stage(ana, bad, None if i is None else ana.space.unit_names[i])
        results["stopped"] = f"{res.stopped} ({where})"
        results["params_non_finite"] = _floats(bad)
        results["warning"] = (
            f"the optimisation stopped at a non-finite value; params_final are the last good "
            f"parameters (step {res.history[-1][0]})" if res.history else
            "the optimisation stopped at a non-finite value at step 0; params_final are the "
            "initial parameters")
    elif not all(math.isfinite(v) for v in (*objective, *hard)):
        results["warning"] = "non-finite objective value; see stopped"
    return results


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_resume(run_dir: Path):
    """``(run_dir, config_file, base_dir, cfg, resume, meta)`` of an interrupted run."""
    if (run_dir / "results.json").exists():
        raise DiffanaError(f"{run_dir}: the run has finished (results.json exists); "
                           f"nothing to resume")
    path = run_dir / report.CHECKPOINT
    if not path.is_file():
        raise DiffanaError(f"{run_dir}: no {report.CHECKPOINT} (a run stopped by SIGINT or "
                           f"SIGTERM writes one); nothing to resume")
    try:
        checkpoint, meta = report.read_checkpoint(path)
    except (OSError, ValueError, KeyError) as err:
        raise DiffanaError(f"{path}: not a readable checkpoint ({err})") from None
    resolved = run_dir / "config.resolved.yaml"
    if not resolved.is_file():
        raise DiffanaError(f"{resolved}: configuration file not found")
    if _sha256(resolved) != meta["config_sha256"]:
        raise DiffanaError(f"{resolved}: changed since the run was interrupted; the checkpoint "
                           f"belongs to the configuration it had then")
    base_dir = Path(meta["base_dir"])
    cfg = configmod.load_dict(yaml.safe_load(resolved.read_text()), source=str(resolved),
                              base_dir=base_dir)
    space = ParameterSpace.of(cfg)  # u: the trainable scalars, then any network's weights
    trainable = space.trainable
    if trainable != meta["trainable"] or (checkpoint is not None
                                          and checkpoint.u.shape != (space.size,)):
        raise DiffanaError(f"{path}: its parameters {meta['trainable']} are not the "
                           f"configuration's trainable ones {trainable}")
    if checkpoint is not None:
        meta["resumed_from_steps"] = [*meta["resumed_from_steps"], checkpoint.step]
    return run_dir, meta["config_file"], base_dir, cfg, checkpoint, meta


def _with_executor(cfg, executor: dict, source) -> configmod.AnalysisConfig:
    """``cfg`` with ``executor`` overridden (validated like the configuration)."""
    data = {**cfg.executor.model_dump(), **{k: v for k, v in executor.items() if v is not None}}
    if data.get("kind") == "local":
        data = {"kind": "local"}
    try:
        ex = configmod.Executor(**data)
    except ValueError as err:
        raise DiffanaError(f"{source}: --executor: {' '.join(str(err).split())}") from None
    if ex.kind == "dask" and configmod.chunked_evaluation_conflict(cfg.engine, cfg.gradient):
        raise DiffanaError(f"{source}: --executor dask needs engine: compiled and gradient: auto, "
                           f"forward or reverse (got engine: {cfg.engine}, gradient: "
                           f"{cfg.gradient})")
    return cfg.model_copy(update={"executor": ex})


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
