"""The whole job, cold and warm: ``diffana run`` twice, each in a fresh process.

* ``cold``: a new, empty ``DIFFANA_CACHE`` in a temporary directory: the events are
  generated, everything is compiled (and written to the compilation cache);
* ``warm``: the same command with the same cache: the events are read from the event cache
  and the compiled functions loaded from ``$DIFFANA_CACHE/jax-compilation``;
* ``warm_new_events``: the same again with the event cache emptied (everything in
  ``DIFFANA_CACHE`` but the compiled and traced functions removed): the events are generated
  again, the compilations are warm (the issue's "warm compilation cache, empty event cache").

For each run it prints the process's wall time (``process_s``: interpreter start, imports and
all), the phase timings from ``results.json`` (``timings``: ``generate_s``, ``read_s``,
``lower_s``, ``compile_s``, ``steps_s``, ``hard_s``, ``sensitivity_s``, ``outputs_s``,
``total_s``; absent in a ``results.json`` written before they existed), the optimiser's first
call (``compile_seconds``, compilation included), the run's own wall time
(``wall_seconds``), and the compilation cache's entries and size after the run, as JSON.

    python benchmarks/job.py --json benchmarks/results/job.json
    python benchmarks/job.py --steps 5                      # compilation, few steps
    python benchmarks/job.py --no-compilation-cache         # warm events, compiling again

Each run of ``configs/agc_ttbar.yaml`` takes a minute or more on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cache_size(directory: Path) -> dict:
    files = [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []
    return {"entries": len(files), "megabytes": sum(p.stat().st_size for p in files) / 2**20}


def one_run(config: Path, cache: Path, out: Path, steps: int | None,
            compilation_cache: bool) -> dict:
    """``diffana run`` in a fresh process with ``DIFFANA_CACHE=cache``: its timings."""
    command = [sys.executable, "-c", "import sys; from diffana.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "run", str(config), "--out", str(out), "-q"]
    if steps is not None:
        command += ["--steps", str(steps)]
    if not compilation_cache:
        command.append("--no-compilation-cache")
    env = {**os.environ, "DIFFANA_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the cache under test is diffana's own
    t0 = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    process_s = time.perf_counter() - t0
    results = json.loads((out / "results.json").read_text())
    return {"process_s": process_s,
            "timings": results.get("timings"),
            "compile_seconds": results.get("compile_seconds"),
            "wall_seconds": results.get("wall_seconds"),
            "compilation_cache": _cache_size(cache / "jax-compilation")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "agc_ttbar.yaml")
    ap.add_argument("--steps", type=int, help="optimiser steps (default: the config's)")
    ap.add_argument("--no-compilation-cache", action="store_true",
                    help="run both with --no-compilation-cache (only the events are warm)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="diffana-job-"))
    try:
        cache = work / "cache"
        runs = {}
        for name in ("cold", "warm", "warm_new_events"):
            if name == "warm_new_events":
                for entry in cache.iterdir():  # the events and lowered chunks, not the compiled
                    if entry.name not in ("jax-compilation", "jax-exported"):
                        (shutil.rmtree if entry.is_dir() else Path.unlink)(entry)
            runs[name] = one_run(args.config.resolve(), cache, work / f"run-{name}",
                                 args.steps, not args.no_compilation_cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"config": str(args.config), "steps": args.steps,
              "compilation_cache": not args.no_compilation_cache, **runs}
    cold, warm = runs["cold"], runs["warm"]
    if cold["timings"] and warm["timings"] and cold["timings"]["compile_s"] > 0:
        result["warm_over_cold_compile_s"] = (warm["timings"]["compile_s"]
                                              / cold["timings"]["compile_s"])
    if cold["compile_seconds"] and warm["compile_seconds"]:
        result["warm_over_cold_compile_seconds"] = (warm["compile_seconds"]
                                                    / cold["compile_seconds"])
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
