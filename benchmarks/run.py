"""Gradient-step benchmark: diffana's compiled engine against hand-written JAX and Awkward.

Runs, in one process on the same machine and the same events:

* ``reference``: the jitted ``value_and_grad`` of ``reference_pipeline.objective`` (the
  hand-written JAX yardstick) on its in-memory events;
* ``diffana``: ``benchmarks/reference.yaml`` — the same physics as a diffana configuration —
  on the same events read from ROOT files, compiled engine, one gradient step
  (``Analysis.loss_and_grad``);
* ``awkward``: the same configuration with the ``awkward`` engine (eager, through JAX-backed
  Awkward arrays) at ``--awkward-events``, beside the compiled engine at that size;
* ``default``: the default analysis (``configs/ttbar_vs_wjets.yaml``, profiled Z0) step time,
  so that the cost of the fit is visible.

Step times are medians over ``--repeat`` steps after a first (compiling) call, whose time is
reported as ``compile_s``. Values and gradients of diffana and the reference are compared.

    python benchmarks/run.py --events 1000000 --json benchmarks/results/cpu.json
    python benchmarks/run.py --quick          # under a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import reference_pipeline  # noqa: E402

from diffana.analysis import Analysis  # noqa: E402
from diffana.config import load  # noqa: E402

THETA = {"jet_pt": 30.0, "btag": 0.5, "lep_pt": 30.0}
# diffana's parameter for each of the reference's
NAMES = {"jet_pt": "jet_pt_min", "btag": "btag_threshold", "lep_pt": "lepton_pt_min"}


def median_time(fn, repeat: int) -> tuple[float, float, object]:
    """``(first call seconds, median of the next `repeat` calls, last result)``."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def reference_step(n_events: int, repeat: int) -> dict:
    host = reference_pipeline.make_events(n_events)
    n = host.pop("n_events")
    ev = {k: jnp.asarray(v) for k, v in host.items()}
    theta = {k: jnp.asarray(v) for k, v in THETA.items()}
    step = jax.jit(jax.value_and_grad(reference_pipeline.objective), static_argnums=2)
    first, med, (value, grad) = median_time(lambda: step(theta, ev, n), repeat)
    return {"compile_s": first, "step_s": med, "value": float(value),
            "grad": {NAMES[k]: float(v) for k, v in grad.items()}}


def generated_analysis(path: Path, n_events: int, engine: str = "compiled",
                       gradient: str | None = None) -> Analysis:
    """The configuration at ``path`` on ``n_events`` events of its own generator (and
    ``gradient`` mode, if given)."""
    cfg = load(path)
    update = {"generate": cfg.generate.model_copy(update={"events": n_events})}
    cfg = cfg.model_copy(update={**update, **({"gradient": gradient} if gradient else {})})
    return Analysis(cfg, path.parent, engine=engine, progress=False)


def reference_analysis(n_events: int, engine: str = "compiled",
                       gradient: str | None = None) -> Analysis:
    return generated_analysis(HERE / "reference.yaml", n_events, engine, gradient)


def diffana_step(ana: Analysis, repeat: int) -> dict:
    """One gradient step in the optimiser's coordinates, converted back to θ units."""
    p0 = ana.initial_params()
    u0 = ana.to_unit(p0)
    first, med, (loss, grad_u) = median_time(lambda: ana.loss_and_grad(u0, p0), repeat)
    sign = -1.0 if ana.maximise else 1.0
    scale = ana.upper_bounds - ana.lower_bounds
    grad = {n: sign * float(g) / s for n, g, s in zip(ana.trainable, grad_u, scale, strict=True)}
    return {"compile_s": first, "step_s": med, "value": sign * float(loss), "grad": grad}


def relative_difference(a: dict, b: dict) -> float:
    worst = abs(a["value"] - b["value"]) / abs(b["value"])
    for n in b["grad"]:
        worst = max(worst, abs(a["grad"][n] - b["grad"][n]) / max(abs(b["grad"][n]), 1e-300))
    return worst


def report(result: dict, path: Path | None) -> dict:
    """Print the result as JSON, and also write it to ``path`` if given."""
    print(json.dumps(result, indent=1))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--awkward-events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true",
                    help="100 k events, awkward at 20 k, 3 repeats, no default-analysis step")
    ap.add_argument("--no-default", action="store_true", help="skip the default analysis step")
    ap.add_argument("--no-awkward", action="store_true",
                    help="skip the awkward engine (CPU-only, eager; e.g. on a GPU)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.awkward_events, args.repeat = 100_000, 20_000, 3
        args.no_default = True

    ref = reference_step(args.events, args.repeat)
    t0 = time.perf_counter()
    ana = reference_analysis(args.events)
    setup_s = time.perf_counter() - t0
    ours = diffana_step(ana, args.repeat)
    del ana
    result = {
        "events": args.events,
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,  # the card's name on a GPU
        "diffana_step_s": ours["step_s"],
        "reference_step_s": ref["step_s"],
        "ratio_vs_reference": ours["step_s"] / ref["step_s"],
        "compile_s": ours["compile_s"],
        "reference_compile_s": ref["compile_s"],
        "setup_s": setup_s,
        "max_relative_difference": relative_difference(ours, ref),
        "value": {"diffana": ours["value"], "reference": ref["value"]},
        "grad": {"diffana": ours["grad"], "reference": ref["grad"]},
    }
    if not args.no_awkward:
        compiled_small = diffana_step(reference_analysis(args.awkward_events), args.repeat)
        awkward = diffana_step(reference_analysis(args.awkward_events, engine="awkward"),
                               max(1, min(args.repeat, 3)))
        result.update({
            "awkward_events": args.awkward_events,
            "awkward_step_s": awkward["step_s"],
            "compiled_step_s_at_awkward_events": compiled_small["step_s"],
            "speedup_vs_awkward": awkward["step_s"] / compiled_small["step_s"],
        })
    if not args.no_default:
        default = Analysis(load(HERE.parent / "configs" / "ttbar_vs_wjets.yaml"),
                           HERE.parent / "configs", progress=False)
        d = diffana_step(default, args.repeat)
        result["default_analysis_step_s"] = d["step_s"]
        result["default_analysis_events"] = sum(s.n_events for s in default.samples.values())
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report(result, args.json)


if __name__ == "__main__":
    main()
