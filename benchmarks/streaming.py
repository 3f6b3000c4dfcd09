"""Streaming: gradient steps over events read chunk by chunk from ROOT files, memory bounded.

The reference configuration (``reference.yaml``, the physics of ``reference_pipeline.py``)
with ``streaming: true``: every evaluation reads the files chunk by chunk (uproot), lowers
each chunk, and takes its yields and their Jacobian (forward mode, three parameters), one
chunk at a time. The events are written once as ROOT files of ``--per-file`` events
(baskets of 100 k events) with the reference generator, ``--seed`` + file index each.

Each measurement runs in a fresh process, so that its peak RSS is its own:

* ``stream``: at ``--events``, the first pass (counting events, finding the chunk shape),
  the first gradient step (compiling), and ``--repeat`` further steps (median);
* ``check``: on the first ``--check-events`` of the same files (a sample that fits in
  memory), the streamed gradient against the in-memory (fused) one: the largest relative
  difference of value and gradients;
* ``reference`` (``--reference``): the hand-written JAX reference's step on as many of its
  own events, in memory.

    python benchmarks/streaming.py --events 20000000 --json benchmarks/results/streaming_20M.json
    python benchmarks/streaming.py --quick        # 2 M events in a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ONE_RUN = """
import importlib.util, json, resource, sys, time
spec = importlib.util.spec_from_file_location("streaming", {here!r} + "/streaming.py")
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
print(json.dumps(bench.{what}({files!r}, {repeat})))
"""


def write_files(directory: Path, n_events: int, per_file: int, seed: int = 0) -> list[dict]:
    """The reference events as ``signal_i.root`` / ``background_i.root`` pairs (written
    once; a file is renamed into place complete): ``[{"signal": path, "background": path,
    "events": n}]``."""
    from reference_events import split_events

    from diffana.io import write_events

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, start in enumerate(range(0, n_events, per_file)):
        n = min(per_file, n_events - start)
        paths = {name: directory / f"{name}_{per_file}_{seed + i}.root"
                 for name in ("signal", "background")}
        if not all(p.exists() for p in paths.values()):
            for name, sample in split_events(n, seed + i).items():
                write_events(paths[name], sample, basket=100_000)
        out.append({**{k: str(v) for k, v in paths.items()}, "events": n})
    return out


def config(files: list[dict], streaming: bool):
    """``reference.yaml`` on these files, streamed or in memory."""
    import yaml

    from diffana.config import load_dict

    data = yaml.safe_load((HERE / "reference.yaml").read_text())
    data.pop("generate")
    for name in ("signal", "background"):
        data["samples"][name]["files"] = [f[name] for f in files]
    data["streaming"] = streaming
    return load_dict(data, source=str(HERE / "reference.yaml"), base_dir=HERE)


def _step(ana):
    """Value and θ-gradient of one step, and its time."""
    import time

    import jax

    p0 = ana.initial_params()
    t0 = time.perf_counter()
    loss, grad = jax.block_until_ready(ana.loss_and_grad(ana.to_unit(p0), p0))
    seconds = time.perf_counter() - t0
    scale = ana.upper_bounds - ana.lower_bounds
    return seconds, {"value": -float(loss),
                     "grad": {n: -float(g) / s for n, g, s in zip(ana.trainable, grad, scale,
                                                                  strict=True)}}


def stream(files: list[dict], repeat: int) -> dict:
    """First pass, first step and later steps of the streamed analysis; peak RSS."""
    import resource
    import statistics
    import time

    import jax

    from diffana.analysis import Analysis

    t0 = time.perf_counter()
    ana = Analysis(config(files, streaming=True), HERE, progress=False)
    first_pass = time.perf_counter() - t0
    first, _ = _step(ana)
    times = [_step(ana)[0] for _ in range(repeat)]
    n = sum(s.n_events for s in ana.samples.values())
    return {"events": n, "files": 2 * len(files), "device": str(jax.devices()[0]),
            "chunk_size": ana.cfg.chunk_size, "gradient": ana.executor.gradient_mode,
            "first_pass_s": first_pass, "first_step_s": first,
            "step_s": statistics.median(times) if times else first,
            "events_per_s": n / (statistics.median(times) if times else first),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def check(files: list[dict], repeat: int) -> dict:
    """The streamed gradient against the in-memory one on the same files."""
    from diffana.analysis import Analysis

    sys.path.insert(0, str(HERE))
    from run import relative_difference

    _, streamed = _step(Analysis(config(files, streaming=True), HERE, progress=False))
    memory = Analysis(config(files, streaming=False), HERE, progress=False)
    _, held = _step(memory)
    return {"check_events": sum(s.n_events for s in memory.samples.values()),
            "in_memory_gradient": memory.executor.gradient_mode,
            "max_relative_difference": relative_difference(streamed, held),
            "value": {"streamed": streamed["value"], "in_memory": held["value"]}}


def reference(files: list[dict], repeat: int) -> dict:
    """The hand-written reference's step on as many events (its own, in memory)."""
    from run import reference_step

    n = sum(f["events"] for f in files)
    return {"reference_step_s": reference_step(n, max(repeat, 1))["step_s"]}


def _fresh(what: str, files: list[dict], repeat: int) -> dict:
    code = ONE_RUN.format(here=str(HERE), what=what, files=files, repeat=repeat)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--check-events", type=int, default=1_000_000)
    ap.add_argument("--per-file", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, help="where the ROOT files go (default: the event "
                    "cache, $DIFFANA_CACHE or ~/.cache/diffana, under streaming/)")
    ap.add_argument("--reference", action="store_true",
                    help="also the hand-written reference's in-memory step at --events")
    ap.add_argument("--quick", action="store_true", help="2 M events, check at 500 k")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.check_events, args.per_file = 2_000_000, 500_000, 500_000
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from run import report

    from diffana.generate import cache_dir

    files = write_files(args.data or cache_dir() / "streaming", args.events, args.per_file,
                        args.seed)
    n_check = max(1, -(-args.check_events // args.per_file))
    result = {"generated_events": args.events, **_fresh("stream", files, args.repeat),
              **_fresh("check", files[:n_check], 0)}
    if args.reference:
        result.update(_fresh("reference", files, args.repeat))
    return report(result, args.json)


if __name__ == "__main__":
    main()
