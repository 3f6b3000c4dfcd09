"""The ``diffana`` command line.

::

    diffana run configs/ttbar_vs_wjets.yaml [--steps N] [--out DIR [--force]]
        [--engine compiled|awkward] [--streaming true|false|auto] [--seed S]
        [--no-compilation-cache] [--no-inference]
        [--executor local|dask [--address tcp://host:8786 | --workers N]]
    diffana run --resume DIR
    diffana validate configs/ttbar_vs_wjets.yaml [--no-imports]
    diffana generate ttbar_vs_wjets --events N --seed S --out DIR
    diffana fit configs/agc_ttbar.yaml --histograms FILE [--out DIR] [--data pseudodata]
        [--n-total SAMPLE=N ...] [--nanoaod-inputs FILE --files-per-process N]
        [--no-inference]
    diffana infer WORKSPACE.json --out DIR [--measurement NAME] [--poi-value MU] [--level 0.05]
        [--interpolation TYPE:CODE ...] [--no-plots]
    diffana evaluate RUN_DIR FILES... --out scores.root

Errors a user can fix print one line (file, key path or branch, value, what is expected)
and exit with code 2; there is no traceback. So does a run that stopped at a NaN or inf
(its ``results.json`` holds the last good parameters), and an error of the operating system
(a full or read-only disk, a directory that cannot be created): the path and the reason.

Ctrl-C (SIGINT) or SIGTERM during ``diffana run`` writes ``checkpoint.npz`` into the run
directory, prints how to continue (``diffana run --resume DIR``) and exits with 130 or 143
(128 + the signal's number). The resumed run ends with the results of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from diffana.exceptions import DiffanaError


def _parser() -> argparse.ArgumentParser:
    from diffana import __version__

    ap = argparse.ArgumentParser(prog="diffana", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"diffana {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    # what every command takes: how much it says while it works
    talk = argparse.ArgumentParser(add_help=False)
    said = talk.add_mutually_exclusive_group()
    said.add_argument("-v", "--verbose", action="store_true",
                      help="say more: every message of the diffana logger (DEBUG)")
    said.add_argument("-q", "--quiet", action="store_true",
                      help="no progress bars and no phase lines: the results, warnings and "
                           "errors only")

    run = sub.add_parser("run", parents=[talk],
                         help="optimise a configuration and write a run directory")
    run.add_argument("config", type=Path, nargs="?",
                     help="the analysis configuration (YAML); not with --resume")
    run.add_argument("--resume", type=Path, metavar="DIR",
                     help="continue the interrupted run in DIR (its config.resolved.yaml and "
                          "checkpoint.npz)")
    run.add_argument("--steps", type=int, help="optimiser steps (overrides optimiser.steps)")
    run.add_argument("--out", type=Path, help="run directory (default runs/<name>-<timestamp>)")
    run.add_argument("--force", action="store_true",
                     help="write into --out even if it holds files diffana did not write "
                          "(none of them is touched)")
    run.add_argument("--engine", choices=["compiled", "awkward"], help="overrides engine")
    run.add_argument("--streaming", choices=["true", "false", "auto"],
                     help="overrides streaming: read the events chunk by chunk on every step "
                          "(true), hold them in memory (false), or hold them where they fit "
                          "memory_limit (auto)")
    run.add_argument("--seed", type=int, help="overrides seed")
    run.add_argument("--no-compilation-cache", action="store_true",
                     help="compile everything afresh and keep nothing in JAX's persistent "
                          "compilation cache ($DIFFANA_CACHE/jax-compilation; overrides "
                          "compilation_cache)")
    run.add_argument("--no-inference", action="store_true",
                     help="no inference.json (limits, impacts, scans of the final hard-cut "
                          "workspace; overrides inference.enabled)")
    run.add_argument("--executor", choices=["local", "dask"],
                     help="where the chunks are evaluated (overrides executor.kind)")
    run.add_argument("--address", help="with --executor dask: the scheduler, tcp://host:8786")
    run.add_argument("--workers", type=int,
                     help="with --executor dask and no --address: a LocalCluster of N processes")

    val = sub.add_parser("validate", parents=[talk],
                         help="check a configuration without running it")
    val.add_argument("config", type=Path, help="the analysis configuration (YAML)")
    val.add_argument("--no-imports", action="store_true",
                     help="run none of the config's imports: (plugin code); what they register "
                          "is reported unchecked")

    gen = sub.add_parser("generate", parents=[talk],
                         help="write synthetic NanoAOD-like ROOT files")
    gen.add_argument("kind", help="generator name (ttbar_vs_wjets), or a config whose "
                     "generate: block (and imports) to use, e.g. configs/agc_ttbar.yaml")
    gen.add_argument("--events", type=int, help="events in total (default: the config's, or 200000)")
    gen.add_argument("--seed", type=int, help="seed (default: the config's, or 0)")
    gen.add_argument("--out", type=Path, required=True,
                     help="directory the ROOT files are written into")

    fit = sub.add_parser("fit", parents=[talk], help="fit the configuration's model to histograms "
                         "(JSON or ROOT, cabinetry's histogram mode)")
    fit.add_argument("config", type=Path,
                     help="the analysis configuration (YAML) whose model is fitted")
    fit.add_argument("--histograms", type=Path, required=True,
                     help="JSON ({region}_{sample}[_{variation}]: {edges, contents}) or ROOT file")
    fit.add_argument("--out", type=Path,
                     help="output directory (default runs/<name>-fit-<timestamp>)")
    fit.add_argument("--data", default="pseudodata",
                     help="sample name of the observations, {region}_{data} (default pseudodata)")
    fit.add_argument("--n-total", action="append", default=[], metavar="SAMPLE=N",
                     help="events the sample's histograms were normalised with (w = σ·L/N), "
                          "for the MC variances w·Σw; repeatable")
    fit.add_argument("--nanoaod-inputs", type=Path, metavar="FILE",
                     help="AGC nanoaod_inputs.json: N_total per sample from its file list")
    fit.add_argument("--files-per-process", type=int, metavar="N",
                     help="with --nanoaod-inputs: the first N files per process were used")
    fit.add_argument("--no-inference", action="store_true",
                     help="no inference.json (limits, impacts, scans; overrides "
                          "inference.enabled)")

    inf = sub.add_parser("infer", parents=[talk],
                         help="limits with bands, impacts, scans and the significance of a "
                              "pyhf workspace (inference.json and figures)")
    inf.add_argument("workspace", type=Path, help="a pyhf workspace (JSON)")
    inf.add_argument("--out", type=Path, required=True, help="output directory")
    inf.add_argument("--measurement", help="the measurement to use (default: the first)")
    inf.add_argument("--poi-value", type=float, metavar="MU",
                     help="POI value of the CLs test (default 1)")
    inf.add_argument("--level", type=float, default=0.05,
                     help="CLs level of the upper limits (default 0.05: 95%% CL)")
    inf.add_argument("--interpolation", action="append", default=[], metavar="TYPE:CODE",
                     help="interpolation code per modifier type: normsys:code1|code4, "
                          "histosys:code0|code4p (default code4, code4p); repeatable")
    inf.add_argument("--no-plots", action="store_true", help="write inference.json only")

    ev = sub.add_parser("evaluate", parents=[talk],
                        help="score the events of new files with a finished run's networks")
    ev.add_argument("run_dir", type=Path, help="a finished run with a network (kind: mlp)")
    ev.add_argument("files", type=Path, nargs="+", help="ROOT files of the run's tree")
    ev.add_argument("--out", type=Path, required=True,
                    help="ROOT file: per event, each network's score and selected_<region>")
    return ap


def _n_total(args) -> dict[str, int]:
    """``N_total`` per sample: ``--nanoaod-inputs``/``--files-per-process``, then ``--n-total``."""
    from diffana.histfit import agc_n_total

    out: dict[str, int] = {}
    if (args.nanoaod_inputs is None) != (args.files_per_process is None):
        raise DiffanaError("--nanoaod-inputs and --files-per-process go together")
    if args.nanoaod_inputs is not None:
        out.update(agc_n_total(args.nanoaod_inputs, args.files_per_process))
    for item in args.n_total:
        sample, _, number = item.partition("=")
        try:
            out[sample] = int(number)
        except ValueError:
            raise DiffanaError(f"--n-total: expected SAMPLE=N with an integer N, got {item!r}"
                               ) from None
    return out


def _terminated(signum, frame):
    """SIGTERM before ``run`` takes over its signals (while importing): exit as for Ctrl-C."""
    err = KeyboardInterrupt()
    err.signum, err.message = signum, f"interrupted by {signal.Signals(signum).name}"
    raise err


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    previous = None
    if (args.command == "run" and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    from diffana.log import configure

    configure(-1 if args.quiet else 1 if args.verbose else 0)
    try:
        if args.command == "validate":
            from diffana.validate import validate

            print(validate(args.config, imports=not args.no_imports))
        elif args.command == "run":
            if (args.config is None) == (args.resume is None):
                raise DiffanaError("run: give a configuration file, or --resume DIR")
            if args.steps is not None and args.steps < 0:
                raise DiffanaError(f"--steps: must be >= 0, got {args.steps}")
            from diffana.run import run

            executor = None
            if any(v is not None for v in (args.executor, args.address, args.workers)):
                executor = {"kind": args.executor or "dask", "address": args.address,
                            "workers": args.workers}
            run(args.config, steps=args.steps, out=args.out, engine=args.engine,
                streaming=args.streaming, seed=args.seed,
                progress=not args.quiet, resume=args.resume, executor=executor,
                force=args.force, echo=print,
                compilation_cache=False if args.no_compilation_cache else None,
                inference=False if args.no_inference else None)
        elif args.command == "generate":
            from diffana.generate import GENERATORS

            kind, events, seed = args.kind, 200_000, 0
            if args.kind.endswith((".yaml", ".yml")):
                from diffana.config import load

                cfg = load(args.kind)  # runs its imports, which register generators
                if cfg.generate is None:
                    raise DiffanaError(f"{args.kind}: generate: the config has no generate block")
                kind, events, seed = cfg.generate.kind, cfg.generate.events, cfg.generate.seed
            if kind not in GENERATORS:
                raise DiffanaError(f"generate: unknown generator {kind!r} "
                                   f"(known: {sorted(GENERATORS)})")
            events = args.events if args.events is not None else events
            seed = args.seed if args.seed is not None else seed
            paths = GENERATORS[kind](args.out, events, seed)
            for sample, path in paths.items():
                print(f"{sample}: {path}")
        elif args.command == "fit":
            from diffana.histfit import fit_histograms

            fit_histograms(args.config, args.histograms, args.out, data=args.data,
                           n_total=_n_total(args), echo=print,
                           inference=False if args.no_inference else None)
        elif args.command == "evaluate":
            from diffana.evaluate import evaluate

            branches = evaluate(args.run_dir, args.files, args.out)
            print(f"{args.out}: {len(next(iter(branches.values())))} events, branches "
                  f"{', '.join(branches)}")
        elif args.command == "infer":
            from diffana.compilation import use_compilation_cache
            from diffana.inference import load_workspace, parse_interpolation, write_inference

            use_compilation_cache()  # a second call loads the fits instead of compiling them
            codes = parse_interpolation(args.interpolation)
            write_inference(load_workspace(args.workspace), args.out,
                            measurement=args.measurement, poi_value=args.poi_value,
                            level=args.level, interpolation=codes, plots=not args.no_plots)
    except DiffanaError as err:
        print(f"diffana: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or directory the operating system refused
        from diffana.files import reason

        where = f"{err.filename}: " if err.filename is not None else ""
        print(f"diffana: error: {where}{reason(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"diffana: {getattr(err, 'message', 'interrupted')}", file=sys.stderr)
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
