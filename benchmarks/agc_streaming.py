"""The AGC configuration streamed against in memory: gradient steps and ``diffana run``.

``configs/agc_ttbar.yaml`` (200 k events generated, 19 event sets: samples and variations
with events of their own). Two measurements, each ratio within one run of this script:

* ``steps_in_one_process``: one gradient step (median of ``--repeat``, after a first one
  that compiles and, streamed, writes the lowered-chunk cache), the modes interleaved in one
  process: in memory (fused, forward, reverse) and streamed (forward and reverse);
  ``streamed_over_in_memory_fused``: the streamed step in the mode ``gradient: auto``
  streams with (``streamed_mode``) over the in-memory default; ``fill``: events over the
  chunks' capacity;
* ``runs``: ``diffana run --steps 5 --streaming false`` and ``true``, alternately, ``--runs``
  times each (``timings.steps_s``: the steps after the first, compiling one), and the final
  objectives' largest relative difference.

    python benchmarks/agc_streaming.py --json benchmarks/results/agc_streaming.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = ROOT / "configs" / "agc_ttbar.yaml"


def _step_s(ana, gradient: str, u, p0) -> float:
    import jax

    ana.executor.gradient = gradient
    start = time.perf_counter()
    jax.block_until_ready(ana.loss_and_grad(u, p0))
    return time.perf_counter() - start


def steps_in_one_process(repeat: int) -> dict:
    """One gradient step of each mode, interleaved, median of ``repeat``."""

    from diffana.analysis import Analysis
    from diffana.config import load

    cfg = load(CONFIG)
    held = Analysis(cfg.model_copy(update={"streaming": False}), CONFIG.parent, progress=False)
    streamed = Analysis(cfg.model_copy(update={"streaming": True}), CONFIG.parent,
                        progress=False)
    p0 = held.initial_params()
    u = held.to_unit(p0)
    modes = {"in memory fused": (held, "fused"), "in memory forward": (held, "forward"),
             "in memory reverse": (held, "reverse"), "streamed forward": (streamed, "forward"),
             "streamed reverse": (streamed, "reverse")}
    for ana, gradient in modes.values():  # compile; streamed: the cache is written
        _step_s(ana, gradient, u, p0)
    times: dict = {name: [] for name in modes}
    for _ in range(repeat):
        for name, (ana, gradient) in modes.items():
            times[name].append(_step_s(ana, gradient, u, p0))
    step = {name: statistics.median(t) for name, t in times.items()}
    losses = {name: float(ana.loss_and_grad(u, p0)[0]) for name, (ana, _) in
              (("in memory", (held, None)), ("streamed", (streamed, None)))}
    streamed.executor.gradient = cfg.gradient  # the mode `gradient: auto` streams with
    auto = f"streamed {streamed.executor.gradient_mode}"
    layout = streamed.executor.kernel.layout
    n_events = sum(streamed.executor.first_pass["n_events"])
    return {"step_s": step,
            "streamed_over_in_memory_forward": step["streamed forward"] / step["in memory forward"],
            "streamed_mode": auto,
            "streamed_over_in_memory_fused": step[auto] / step["in memory fused"],
            "loss": losses,
            "loss_relative_difference": abs(losses["streamed"] - losses["in memory"])
            / abs(losses["in memory"]),
            "streamed_chunks": streamed.executor.first_pass["n_chunks"],
            "fill": n_events / (streamed.executor.first_pass["n_chunks"] * layout.events),
            "slots": layout.slots, "events": n_events,
            "repeat": repeat, "in_memory_chunks": len(held.executor.chunks)}


def runs(n: int) -> dict:
    """``diffana run --steps 5`` in memory and streamed, alternately, ``n`` times each."""
    out: dict = {"false": [], "true": []}
    finals: dict = {"false": [], "true": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            for mode in ("false", "true"):
                run_dir = Path(tmp) / f"{mode}{i}"
                subprocess.run([sys.executable, "-m", "diffana.cli", "run", str(CONFIG),
                                "--steps", "5", "--streaming", mode, "--out", str(run_dir),
                                "--quiet"], check=True, cwd=ROOT)
                res = json.loads((run_dir / "results.json").read_text())
                out[mode].append({k: res["timings"][k] for k in ("compile_s", "steps_s")})
                finals[mode].append(res["objective_final"])
    steps = {m: statistics.median(r["steps_s"] for r in out[m]) for m in out}
    ref = finals["false"][0]
    return {"in_memory": out["false"], "streamed": out["true"],
            "median_steps_s": {"in memory": steps["false"], "streamed": steps["true"]},
            "streamed_over_in_memory": steps["true"] / steps["false"],
            "objective_final_max_relative_difference": max(
                abs(f - ref) / abs(ref) for f in finals["false"] + finals["true"])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="steps per mode in one process")
    ap.add_argument("--runs", type=int, default=3, help="diffana run pairs")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from run import report

    result = {"what": __doc__.split("\n")[0], "steps_in_one_process": steps_in_one_process(
        args.repeat)}
    if args.runs:
        result["runs"] = runs(args.runs)
    return report(result, args.json)


if __name__ == "__main__":
    main()
