"""Gradient steps on Dask workers: step time for 1 and 2 workers, data moved, a paper estimate.

* ``steps``: the reference configuration (``reference.yaml``) on ``--events`` events with
  ``executor: {kind: dask, workers: N}`` (a ``LocalCluster`` of N processes, one thread
  each) for each N of ``--workers``, and the same events with the local executor
  (``gradient: forward`` both): the median step time of ``--repeat`` steps after the first,
  and the bytes that travel per step (parameters to every task, a result back from each).
* ``estimate``: per-chunk costs of the AGC analysis (``configs/agc_ttbar.yaml``) measured
  here, scaled to the full AGC input (``--agc-events``, ~1 billion events) on ``--nodes``
  workers: compute ``chunks × time per chunk / workers``, plus Dask's per-task overhead
  and a tree reduction of ``log2(tasks)`` hops.
* ``--streaming``: for each N also the same events streamed on the workers (``streaming:
  true``: each worker streams its own part of the files every step, from its lowered-chunk
  cache after the first), one task per worker per step and one per work item, in the same
  run: setup (cluster and first pass), the first step (the files read again, the caches
  written), the median step after it, and the ratio of the streamed step to the in-memory one.

    python benchmarks/dask_steps.py --json benchmarks/results/dask.json
    python benchmarks/dask_steps.py --streaming --events 1000000 --workers 2 --no-estimate \
        --json benchmarks/results/dask_streaming.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# Dask's scheduler costs per task (submission, scheduling, result): its documentation gives
# about 1 ms per task as the rule of thumb ("Dask Best Practices: avoid very large graphs").
TASK_OVERHEAD_S = 1e-3
HOP_S = 5e-3  # one reduction hop between workers (small message, same data centre)


def _steps(ana, repeat: int) -> tuple[float, float]:
    import jax

    p0 = ana.initial_params()
    u = ana.to_unit(p0)
    t0 = time.perf_counter()
    jax.block_until_ready(ana.loss_and_grad(u, p0))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(ana.loss_and_grad(u, p0))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _dask(cfg, n: int, repeat: int, streaming: bool = False) -> dict:
    """One Dask configuration's setup, first step and median step."""
    from diffana.analysis import Analysis

    t0 = time.perf_counter()
    executor = cfg.executor.model_copy(update={"kind": "dask", "workers": n})
    ana = Analysis(cfg.model_copy(update={"streaming": streaming, "executor": executor}), HERE,
                   progress=False)
    setup = time.perf_counter() - t0
    try:
        first, step = _steps(ana, repeat)
        out = {"workers": n, "setup_s": setup, "first_step_s": first, "step_s": step,
               "tasks_per_step": ana.executor.tasks, "bytes_per_step": ana.executor.bytes_per_step}
        if streaming:
            read = ana.executor.parts_read()
            out.update(cached_first_pass=all(r["cached_first_pass"] for r in read.values()),
                       prefetch_depth=min(r["prefetch_depth"] for r in read.values()),
                       chunks_per_task=max(r["chunks"] for r in read.values()))
        return out
    finally:
        ana.close()


def steps(n_events: int, workers: list[int], repeat: int, streaming: bool = False) -> dict:
    from diffana.analysis import Analysis
    from diffana.config import load

    cfg = load(HERE / "reference.yaml")
    cfg = cfg.model_copy(update={
        "generate": cfg.generate.model_copy(update={"events": n_events}), "gradient": "forward"})
    out: dict = {"events": n_events, "repeat": repeat}
    local = Analysis(cfg, HERE, progress=False)
    out["local_first_step_s"], out["local_step_s"] = _steps(local, repeat)
    del local
    for n in workers:
        out[f"dask_{n}"] = _dask(cfg, n, repeat)
        if not streaming:
            continue
        from diffana.executors.dask_streamed import DaskStreamedExecutor

        out[f"dask_{n}_streamed"] = _dask(cfg, n, repeat, streaming=True)
        DaskStreamedExecutor.parts_per_worker = 10**9  # a part per work item
        try:
            out[f"dask_{n}_streamed_per_item"] = _dask(cfg, n, repeat, streaming=True)
        finally:
            DaskStreamedExecutor.parts_per_worker = 1
        held = out[f"dask_{n}"]["step_s"]
        out[f"dask_{n}_streamed_over_in_memory"] = out[f"dask_{n}_streamed"]["step_s"] / held
        out[f"dask_{n}_per_item_over_in_memory"] = (
            out[f"dask_{n}_streamed_per_item"]["step_s"] / held)
    return out


def estimate(agc_events: float, nodes: int, repeat: int) -> dict:
    """Per-chunk costs of the AGC analysis measured here, scaled to the full input."""
    import jax

    from diffana.analysis import Analysis
    from diffana.chunks import lower_sets, one_set_chunk, work_items
    from diffana.config import load
    from diffana.plan import event_sets
    from diffana.stages import jit_jacobian

    cfg = load(HERE.parent / "configs" / "agc_ttbar.yaml")
    cfg = cfg.model_copy(update={"streaming": True, "gradient": "forward"})
    t0 = time.perf_counter()
    ana = Analysis(cfg, HERE.parent / "configs", progress=False)
    first_pass = time.perf_counter() - t0
    # one Dask task per work item (a range of a file), all its event sets
    specs = work_items([r.entries for r in ana.readers], cfg.chunk_size)
    kernel, (_, set_index) = ana.executor.kernel, event_sets(cfg)

    def task(item):
        reader = ana.readers[item.reader]
        sets = reader.read_range(item.file, item.start, item.stop)
        lowered = lower_sets(ana.plan, set_index, reader.name, sets)
        return [one_set_chunk(kernel.layout, ana.plan, g, b, len(kernel.groups), ana.device,
                              cfg.name) for g, b in lowered]

    tasks_here = [task(item) for item in specs]
    p0 = ana.initial_params()
    u = ana.to_unit(p0)
    jax.block_until_ready(jit_jacobian(kernel, u, p0, tasks_here[0][0][2]))  # compile
    per_task = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for chunks in tasks_here:
            for _, _, chunk in chunks:
                jax.block_until_ready(jit_jacobian(kernel, u, p0, chunk))
        per_task.append((time.perf_counter() - t0) / len(specs))
    read = sum(item.stop - item.start for item in specs)
    t_task = statistics.median(per_task)
    input_per_task = read / len(specs)  # events read per task (before preselection)
    out = {"agc_events": agc_events, "nodes": nodes, "measured_tasks": len(specs),
           "events_read": read, "task_s": t_task,
           "read_and_lower_s_per_input_event": first_pass / read,
           "first_read_and_lower_s": agc_events * first_pass / read / nodes}
    # as measured (ranges as the files here give them: small files make short ranges), and
    # with full ranges of chunk_size and 4 × chunk_size entries per task
    for label, per_task_events in (("as_measured", input_per_task),
                                   ("full_ranges", cfg.chunk_size),
                                   ("ranges_4x", 4 * cfg.chunk_size)):
        n_tasks = math.ceil(agc_events / per_task_events)
        compute = agc_events * (t_task / input_per_task) / nodes
        scheduler = n_tasks * TASK_OVERHEAD_S
        reduction = math.ceil(math.log2(max(n_tasks, 2))) * HOP_S
        out[label] = {"events_per_task": per_task_events, "tasks_per_step": n_tasks,
                      "compute_s": compute, "scheduler_s": scheduler, "reduction_s": reduction,
                      "step_s": compute + scheduler + reduction}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--agc-events", type=float, default=1e9)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--no-steps", action="store_true", help="only the paper estimate")
    ap.add_argument("--no-estimate", action="store_true", help="only the steps")
    ap.add_argument("--streaming", action="store_true",
                    help="also stream on the workers (one task per worker, and per work item)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from run import report

    result = {}
    if not args.no_steps:
        result["steps"] = steps(args.events, args.workers, args.repeat, args.streaming)
    if not args.no_estimate:
        result["estimate"] = estimate(args.agc_events, args.nodes, args.repeat)
    return report(result, args.json)


if __name__ == "__main__":
    main()
