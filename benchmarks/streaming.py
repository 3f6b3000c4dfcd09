"""Streaming: gradient steps over events read chunk by chunk from ROOT files, memory bounded.

The reference configuration (``reference.yaml``, the physics of ``reference_pipeline.py``)
with ``streaming: true``: every evaluation takes the chunks one at a time (read ahead in a
thread, ``prefetch`` deep), takes each one's yields and their Jacobian (forward mode, three
parameters), and sums. The first pass that pads the chunks writes them into the
lowered-chunk cache; later passes map them from it. The events are written once as ROOT
files of ``--per-file`` events (baskets of 100 k events) with the reference generator,
``--seed`` + file index each.

Each measurement runs in a fresh process, so that its peak RSS is its own, and with a
lowered-chunk cache of its own (a fresh ``$DIFFANA_CACHE``, removed at the end):

* ``stream``: at ``--events``, the first pass (counting events, finding the chunk shape), the
  first gradient step (compiling; reading the files and writing the cache), and ``--repeat``
  further steps (median; from the cache): ``first_pass_s``, ``first_step_s``, ``step_s``;
* the same again in a new process, the cache now warm: ``warm_first_pass_s``,
  ``warm_first_step_s`` (a second run on the same files and configuration);
* without the cache (``lowered_cache: false``: every step reads and lowers the files, read
  ahead): ``no_cache_step_s``; with ``--slow-disk-ms``, the same on a simulated slow disk
  (the reader sleeps that long per 100 k-event basket), with and without prefetch;
* ``check``: on the first ``--check-events`` of the same files (a sample that fits in
  memory), the streamed gradient (from the files, then from the cache) against the
  in-memory (fused) one: the largest relative difference of value and gradients;
* ``reference`` (``--reference``): the hand-written JAX reference's step on as many of its
  own events, in memory; ``reference_ratio`` is ``reference_step_s / step_s`` (1: streaming
  at the in-memory reference's speed), measured in the same run.

    python benchmarks/streaming.py --events 5000000 --repeat 3 --reference
    python benchmarks/streaming.py --events 20000000 --json benchmarks/results/streaming_20M.json
    python benchmarks/streaming.py --quick        # 2 M events in a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ONE_RUN = """
import importlib.util, json, resource, sys, time
spec = importlib.util.spec_from_file_location("streaming", {here!r} + "/streaming.py")
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
print(json.dumps(bench.{what}({files!r}, {repeat}, **{options!r})))
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


def config(files: list[dict], streaming: bool | str, **updates):
    """``reference.yaml`` on these files, streamed or in memory (and other settings)."""
    import yaml

    from diffana.config import load_dict

    data = yaml.safe_load((HERE / "reference.yaml").read_text())
    data.pop("generate")
    for name in ("signal", "background"):
        data["samples"][name]["files"] = [f[name] for f in files]
    data.update(streaming=streaming, **updates)
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


def _slow_disk(ms_per_basket: float) -> None:
    """Simulate files on a slow disk: the reader sleeps per 100 k-event basket it reads."""
    import time

    from diffana import io

    iterate = io.iterate_branches

    def slow(*args, **kwargs):
        for index, first, chunk in iterate(*args, **kwargs):
            time.sleep(ms_per_basket / 1e3 * len(chunk) / 100_000)
            yield index, first, chunk

    io.iterate_branches = slow


def stream(files: list[dict], repeat: int, slow_disk_ms: float = 0.0, **updates) -> dict:
    """First pass, first step and later steps of the streamed analysis; peak RSS."""
    import resource
    import statistics
    import time

    import jax

    from diffana.analysis import Analysis

    if slow_disk_ms:
        _slow_disk(slow_disk_ms)
    t0 = time.perf_counter()
    ana = Analysis(config(files, streaming=True, **updates), HERE, progress=False)
    first_pass = time.perf_counter() - t0
    first, _ = _step(ana)
    times = [_step(ana)[0] for _ in range(repeat)]
    n = sum(s.n_events for s in ana.samples.values())
    ex = ana.executor
    cache = ex.cache.path if ex.cache is not None and ex.cache.complete else None
    return {"events": n, "files": 2 * len(files), "device": str(jax.devices()[0]),
            "chunk_size": ana.cfg.chunk_size, "gradient": ex.gradient_mode,
            "prefetch": ex.prefetch_depth, "cached_first_pass": ex.cached_first_pass,
            "first_pass_s": first_pass, "first_step_s": first,
            "step_s": statistics.median(times) if times else first,
            "events_per_s": n / (statistics.median(times) if times else first),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cache_mb": (sum(f.stat().st_size for f in cache.iterdir()) / 1e6
                         if cache is not None else 0.0)}


def check(files: list[dict], repeat: int) -> dict:
    """The streamed gradient (from the files, then from the cache) against the in-memory
    one on the same files."""
    from diffana.analysis import Analysis

    sys.path.insert(0, str(HERE))
    from run import relative_difference

    streaming = Analysis(config(files, streaming=True), HERE, progress=False)
    _, from_files = _step(streaming)
    _, from_cache = _step(streaming)
    memory = Analysis(config(files, streaming=False), HERE, progress=False)
    _, held = _step(memory)
    return {"check_events": sum(s.n_events for s in memory.samples.values()),
            "in_memory_gradient": memory.executor.gradient_mode,
            "max_relative_difference": max(relative_difference(from_files, held),
                                           relative_difference(from_cache, held)),
            "value": {"streamed": from_cache["value"], "in_memory": held["value"]}}


def reference(files: list[dict], repeat: int) -> dict:
    """The hand-written reference's step on as many events (its own, in memory)."""
    from run import reference_step

    n = sum(f["events"] for f in files)
    return {"reference_step_s": reference_step(n, max(repeat, 1))["step_s"]}


def _fresh(what: str, files: list[dict], repeat: int, cache: Path | None = None,
           **options) -> dict:
    code = ONE_RUN.format(here=str(HERE), what=what, files=files, repeat=repeat,
                          options=options)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    if cache is not None:  # a lowered-chunk cache of this benchmark's own
        env["DIFFANA_CACHE"] = str(cache)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _prefixed(prefix: str, result: dict, keys: tuple) -> dict:
    return {f"{prefix}_{k}": result[k] for k in keys}


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
    ap.add_argument("--no-cache-step", action="store_true",
                    help="skip the steps without the lowered-chunk cache")
    ap.add_argument("--slow-disk-ms", type=float, default=0.0,
                    help="also the steps without the cache on a simulated slow disk: this "
                         "many milliseconds per 100 k-event basket")
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
    cache = cache_dir() / f"streaming-benchmark-{os.getpid()}"  # removed at the end
    try:
        result = {"generated_events": args.events,
                  **_fresh("stream", files, args.repeat, cache)}
        warm = _fresh("stream", files, 0, cache)  # a second run: the cache is warm
        result.update(_prefixed("warm", warm, ("first_pass_s", "first_step_s",
                                               "cached_first_pass")))
        if not args.no_cache_step:
            cold = _fresh("stream", files, args.repeat, cache, lowered_cache=False)
            result.update(_prefixed("no_cache", cold, ("first_step_s", "step_s",
                                                       "peak_rss_mb")))
        if args.slow_disk_ms:
            for name, depth in (("slow_disk", 2), ("slow_disk_no_prefetch", 0)):
                slow = _fresh("stream", files, args.repeat, cache, lowered_cache=False,
                              prefetch=depth, slow_disk_ms=args.slow_disk_ms)
                result[f"{name}_step_s"] = slow["step_s"]
            result["slow_disk_ms_per_basket"] = args.slow_disk_ms
        result.update(_fresh("check", files[:n_check], 0, cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if args.reference:
        result.update(_fresh("reference", files, args.repeat))
        result["reference_ratio"] = result["reference_step_s"] / result["step_s"]
        if "no_cache_step_s" in result:
            result["no_cache_reference_ratio"] = (result["reference_step_s"]
                                                  / result["no_cache_step_s"])
    return report(result, args.json)


if __name__ == "__main__":
    main()
