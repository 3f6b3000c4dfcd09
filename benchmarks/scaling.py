"""Step time and peak memory against the number of events: ``benchmarks/scaling.png``.

Each size runs in a fresh process (so that its peak RSS is its own): the reference
configuration (``reference.yaml``) on the reference pipeline's events read from ROOT, one
compiled gradient step (median of ``--repeat``), and the hand-written reference on the same
events.

    python benchmarks/scaling.py --sizes 10000 100000 1000000 --json benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ONE_SIZE = """
import importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("bench", {run!r})
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
n, repeat, mode = {n}, {repeat}, {mode!r}
ana = bench.reference_analysis(n, gradient=mode)
ours = bench.diffana_step(ana, repeat)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
del ana
ref = bench.reference_step(n, repeat)
print(json.dumps({{"events": n, "gradient": mode, "diffana_step_s": ours["step_s"],
                  "compile_s": ours["compile_s"], "reference_step_s": ref["step_s"],
                  "diffana_peak_rss_mb": rss,
                  "max_relative_difference": bench.relative_difference(ours, ref)}}))
"""


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+",
                    default=[10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gradient", default="fused", choices=["fused", "forward", "reverse"])
    ap.add_argument("--json", type=Path, default=HERE / "results" / "scaling.json")
    ap.add_argument("--plot", type=Path, default=HERE / "scaling.png")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from --json")
    args = ap.parse_args(argv)
    if args.replot:
        rows = json.loads(args.json.read_text())
        plot(rows, args.plot)
        return rows
    rows = []
    for n in args.sizes:
        code = ONE_SIZE.format(run=str(HERE / "run.py"), n=n, repeat=args.repeat,
                               mode=args.gradient)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.plot)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    n = [r["events"] for r in rows]
    # streamed runs (benchmarks/streaming.py): events read from ROOT on every step
    streamed = sorted((json.loads(f.read_text())
                       for f in (HERE / "results").glob("streaming_*.json")),
                      key=lambda r: r["events"])
    ours, ref, stream = "C0", "C1", "C3"  # one colour per series in both panels
    with plt.style.context(mplhep.style.CMS):
        fig, (a, b) = plt.subplots(1, 2, figsize=(14, 6))
        a.loglog(n, [r["diffana_step_s"] for r in rows], "o-", color=ours,
                 label="diffana (in memory)")
        a.loglog(n, [r["reference_step_s"] for r in rows], "s--", color=ref,
                 label="hand-written JAX")
        b.loglog(n, [r["diffana_peak_rss_mb"] for r in rows], "o-", color=ours,
                 label="diffana (in memory)")
        if streamed:
            a.loglog([r["events"] for r in streamed], [r["step_s"] for r in streamed], "^",
                     color=stream, label="diffana (streamed from ROOT)")
            b.loglog([r["events"] for r in streamed], [r["peak_rss_mb"] for r in streamed], "^",
                     color=stream, label="diffana (streamed from ROOT)")
        last = rows[-1]["diffana_step_s"] / n[-1]
        a.loglog(n, [last * x for x in n], ":", color="grey", label="linear")
        # memory: the process's fixed part (libraries, compiled code) plus a part per event
        rss = [r["diffana_peak_rss_mb"] for r in rows]
        per_event = (rss[-1] - rss[0]) / (n[-1] - n[0])
        b.loglog(n, [rss[0] + per_event * (x - n[0]) for x in n], ":", color="grey",
                 label=f"{rss[0]:.0f} MB + {per_event * 1e3:.2f} kB/event")
        for ax in (a, b):
            ax.set_xlabel("events")
            ax.legend(fontsize=13)
        a.set_ylabel("gradient step [s]")
        b.set_ylabel("peak RSS [MB]")
        fig.subplots_adjust(wspace=0.45)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


if __name__ == "__main__":
    main()
