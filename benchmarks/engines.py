"""The compiled engine against the awkward engine: one gradient step, by analysis and size.

For each analysis (``reference``: ``benchmarks/reference.yaml``; ``agc``:
``configs/agc_ttbar.yaml``) and each number of generated events, both engines take the
same gradient step (``Analysis.loss_and_grad``) on the same events, each in a fresh
process; step times are medians of ``--repeat`` steps after a first call, whose time
(the awkward engine compiles every primitive it dispatches, once per array shape) is
reported apart. Values and gradients of the two engines are compared.

Per analysis, the step times at the smallest and largest size give ``t(n) = fixed +
per_event × n`` for each engine (the compiled engine's fixed cost is below the noise: its
fit can come out slightly negative); the awkward engine's fixed cost is its eager
dispatch (thousands of primitives, each through Awkward's broadcasting and JAX's op-by-op
dispatch), which the compiled
engine does not have; its per-event cost is that of the same XLA kernels run op by op
instead of fused.

    python benchmarks/engines.py --json benchmarks/results/engines.json
    python benchmarks/engines.py --analyses reference --events 20000 200000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONFIGS = {"reference": HERE / "reference.yaml",
           "agc": HERE.parent / "configs" / "agc_ttbar.yaml"}


def one(analysis: str, engine: str, n_events: int, repeat: int) -> dict:
    """One engine's step on one analysis and size (run in its own process)."""
    import run as bench

    ana = bench.generated_analysis(CONFIGS[analysis], n_events, engine)
    step = bench.diffana_step(ana, repeat)
    return {**step, "analysis": analysis, "engine": engine, "events": n_events,
            "device": str(bench.jax.devices()[0]),
            "events_selected_sets": sum(s.n_events for s in ana.samples.values())}


def in_fresh_process(analysis: str, engine: str, n_events: int, repeat: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", analysis, engine, str(n_events),
                          "--repeat", str(repeat)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{analysis} {engine} {n_events}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def linear_fit(rows: list[dict]) -> dict:
    """``fixed_s`` and ``per_event_s`` of ``t = fixed + per_event × n`` through the rows."""
    (n0, t0), (n1, t1) = ((r["events"], r["step_s"]) for r in (rows[0], rows[-1]))
    per_event = (t1 - t0) / (n1 - n0)
    return {"fixed_s": t0 - per_event * n0, "per_event_s": per_event}


def compare(analysis: str, sizes: list[int], repeat: int) -> dict:
    import run as bench

    rows, fits = [], {}
    for engine in ("compiled", "awkward"):
        steps = []
        for n in sizes:
            # the awkward engine's steps are seconds long: fewer of them
            r = in_fresh_process(analysis, engine, n, repeat if engine == "compiled" else
                                 max(1, min(repeat, 3)))
            steps.append(r)
            print(json.dumps({k: r[k] for k in ("analysis", "engine", "events", "compile_s",
                                                "step_s")}), flush=True)
        if len(sizes) > 1:
            fits[engine] = linear_fit(steps)
        rows.append(steps)
    table = []
    for c, a in zip(*rows, strict=True):
        table.append({"events": c["events"], "events_selected_sets": c["events_selected_sets"],
                      "compiled_step_s": c["step_s"], "awkward_step_s": a["step_s"],
                      "speedup_vs_awkward": a["step_s"] / c["step_s"],
                      "compiled_first_call_s": c["compile_s"],
                      "awkward_first_call_s": a["compile_s"],
                      "max_relative_difference": bench.relative_difference(a, c)})
    out = {"analysis": analysis, "config": str(CONFIGS[analysis].relative_to(HERE.parent)),
           "sizes": table}
    if fits:
        out["fit"] = fits
        out["per_event_cost_ratio"] = (fits["awkward"]["per_event_s"]
                                       / fits["compiled"]["per_event_s"])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--analyses", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--events", type=int, nargs="+", default=[20_000, 200_000],
                    help="generated events (the AGC keeps ~1/6 of them after preselection, "
                         "and adds its JES and JER copies)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--one", nargs=3, metavar=("ANALYSIS", "ENGINE", "EVENTS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        analysis, engine, n = args.one
        result = one(analysis, engine, int(n), args.repeat)
        print(json.dumps({k: (float(v) if k == "value" else v) for k, v in result.items()}))
        return result

    import run as bench

    result = {"device": str(bench.jax.devices()[0]),
              "analyses": [compare(a, sorted(args.events), args.repeat) for a in args.analyses]}
    return bench.report(result, args.json)


if __name__ == "__main__":
    main()
