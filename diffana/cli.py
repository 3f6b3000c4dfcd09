"""The ``diffana`` command line.

::

    diffana run configs/ttbar_vs_wjets.yaml [--steps N] [--out DIR] [--engine compiled|awkward] [--seed S]
    diffana validate configs/ttbar_vs_wjets.yaml
    diffana generate ttbar_vs_wjets --events N --seed S --out DIR

Errors a user can fix print one line (file, key path or branch, value, what is expected)
and exit with code 2; there is no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffana.exceptions import DiffanaError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="diffana", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="optimise a configuration and write a run directory")
    run.add_argument("config", type=Path)
    run.add_argument("--steps", type=int, help="optimiser steps (overrides optimiser.steps)")
    run.add_argument("--out", type=Path, help="run directory (default runs/<name>-<timestamp>)")
    run.add_argument("--engine", choices=["compiled", "awkward"], help="overrides engine")
    run.add_argument("--seed", type=int, help="overrides seed")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    val = sub.add_parser("validate", help="check a configuration without running it")
    val.add_argument("config", type=Path)

    gen = sub.add_parser("generate", help="write synthetic NanoAOD-like ROOT files")
    gen.add_argument("kind", help="generator name, e.g. ttbar_vs_wjets")
    gen.add_argument("--events", type=int, default=200_000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            from diffana.config import load

            cfg = load(args.config)
            print(f"{args.config}: valid ({len(cfg.samples)} samples, {len(cfg.regions)} regions, "
                  f"{sum(p.trainable for p in cfg.parameters.values())} trainable parameters)")
        elif args.command == "run":
            from diffana.run import run

            if args.steps is not None and args.steps < 0:
                raise DiffanaError(f"--steps: must be >= 0, got {args.steps}")
            run(args.config, steps=args.steps, out=args.out, engine=args.engine, seed=args.seed,
                progress=not args.quiet)
        elif args.command == "generate":
            from diffana.generate import GENERATORS

            if args.kind not in GENERATORS:
                raise DiffanaError(f"generate: unknown generator {args.kind!r} "
                                   f"(known: {sorted(GENERATORS)})")
            paths = GENERATORS[args.kind](args.out, args.events, args.seed)
            for sample, path in paths.items():
                print(f"{sample}: {path}")
    except DiffanaError as err:
        print(f"diffana: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffana: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
