"""A learned observable against m_bjj on the AGC, judged on held-out events.

For each seed (the split of the events into training and test halves, and the network's
initial weights), three runs of the AGC model with all its systematics, each optimising on
the training half and evaluated with hard cuts and hard histograms on the test half:

* ``cuts_mbjj``: ``configs/agc_ttbar.yaml`` as it is (4j2b histograms m_bjj), the cuts
  optimised on σ(ttbar_norm);
* ``nn_bce``: ``configs/agc_ttbar_nn.yaml`` (4j2b histograms ``nn_score``, a network of
  H_T, m_bjj and the four leading jets' pT), the network first trained as a classifier in a
  diffana run of its own (``objective: {kind: binary_cross_entropy, signal: [ttbar],
  observable: nn_score, region: 4j2b, balanced: true}``: ttbar against every other nominal
  sample, each class weighted to the same total, on the training events of 4j2b, the cuts
  held at their initial values), then, from that run (``init: {from: RUN_DIR}``), frozen
  while the cuts are optimised;
* ``nn_end_to_end``: ``nn_bce``'s end point, then the network and the cuts trained
  together on σ(ttbar_norm) (``init: {from: RUN_DIR}``).

Writes ``{"events", "seeds", "<variant>": {"test_sigma": [...], "train_sigma": [...],
"cuts": [...], "run_dirs": [...]}, "classifier": {"test_bce": [...], "train_bce": [...],
...}, "step_s": {"cuts": s, "nn": s}}`` (σ: the relative uncertainty of ttbar_norm, the hard
evaluation; each run directory holds the hard histograms, ``histograms.root``;
``classifier``: the classifier run's hard cross-entropy on the test and training events).

    python benchmarks/learned_observable.py --events 200000 --seeds 3 --json out.json
    python benchmarks/learned_observable.py --quick    # 20 k events, 1 seed, a few minutes

The classifier's run (``bce`` in each seed's folder) is ``--epochs`` optimiser steps of the
network alone (Adam, learning rate 3e-3).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import yaml

from diffana.run import run

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ["ht", "m_bjj", "jet0_pt", "jet1_pt", "jet2_pt", "jet3_pt"]


HIDDEN = [32, 32]  # the network's hidden layers (--hidden)


def config(name: str, events: int, seed: int, steps: int, **extra) -> dict:
    """A shipped AGC configuration with ``events`` generated, a split seeded by ``seed``
    (the network's hidden layers: :data:`HIDDEN`)."""
    data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    data["imports"] = [str((ROOT / "configs" / i).resolve()) for i in data["imports"]]
    data["generate"]["events"] = events
    data["split"] = {"test_fraction": 0.5, "seed": seed}
    data["optimiser"]["steps"] = steps
    if "nn_score" in data["observables"]:
        data["observables"]["nn_score"]["options"].update(seed=seed, hidden=list(HIDDEN))
    data.update(extra)
    return data


def bce_pretrain(events: int, seed: int, folder: Path, epochs: int) -> dict:
    """Train the network as a classifier in a diffana run (``folder/bce``): the binary
    cross-entropy of ``nn_score`` on the training events of 4j2b, the cuts held, ``epochs``
    steps. Its run directory (``parameters.npz``: the weights and the inputs'
    standardisation) starts the next runs; its hard objective is the cross-entropy of the
    test events (``test_sigma`` of :func:`one_run`: here a cross-entropy)."""
    data = config("agc_ttbar_nn", events, seed, epochs)
    data["objective"] = {"kind": "binary_cross_entropy", "signal": ["ttbar"],
                         "observable": "nn_score", "region": "4j2b", "balanced": True}
    data["optimiser"] = {"name": "adam", "options": {"learning_rate": 3e-3}, "steps": epochs,
                         "groups": {"cuts": {"name": "sgd", "options": {"learning_rate": 0.0}}}}
    # the classifier needs the nominal samples only: no variations, no systematics
    data["samples"] = {n: s for n, s in data["samples"].items() if "variation_of" not in s}
    data.pop("variations", None)
    data["model"]["systematics"] = []
    data["model"].pop("pseudodata", None)
    return one_run(data, folder, "bce")


def one_run(data: dict, folder: Path, name: str) -> dict:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    res = run(path, out=folder / name, progress=False)
    # each run compiles its own functions (its kernel is a static argument): let them go, or
    # a process of a dozen runs exhausts the memory XLA's CPU compiler maps its code into
    jax.clear_caches()
    steps = max(res["steps_done"], 1)
    return {"test_sigma": res["hard"]["objective_final"],
            "train_sigma": res["hard_train"]["objective_final"],
            "test_sigma_initial": res["hard"]["objective_initial"],
            "cuts": res["params_final"], "run_dir": str(folder / name),
            "step_s": res["timings"]["steps_s"] / steps}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=400, help="classifier training steps")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="20 k events, 1 seed, 10 steps")
    ap.add_argument("--out", type=Path, help="where the run directories go (default: temporary)")
    ap.add_argument("--hidden", type=int, nargs="+", default=HIDDEN,
                    help="the network's hidden layer widths (default 32 32)")
    args = ap.parse_args(argv)
    HIDDEN[:] = args.hidden
    if args.quick:
        args.events, args.seeds, args.steps, args.epochs = 20_000, 1, 10, 200
    folder = args.out or Path(tempfile.mkdtemp(prefix="learned-observable-"))
    variants = ("cuts_mbjj", "nn_bce", "nn_end_to_end")
    out: dict = {"events": args.events, "seeds": list(range(args.seeds)), "steps": args.steps,
                 "hidden": list(HIDDEN),
                 **{v: {k: [] for k in ("test_sigma", "train_sigma", "test_sigma_initial",
                                        "cuts", "run_dirs")} for v in variants},
                 # the classifier's own run: its cross-entropy (hard cuts) before and after
                 "classifier": {k: [] for k in ("test_bce", "train_bce", "test_bce_initial",
                                                "step_s")}}
    step_s: dict = {"cuts": [], "nn": []}
    start = time.perf_counter()
    for seed in range(args.seeds):
        here = folder / f"seed{seed}"
        here.mkdir(parents=True, exist_ok=True)
        bce = bce_pretrain(args.events, seed, here, args.epochs)
        out["classifier"]["test_bce"].append(bce["test_sigma"])
        out["classifier"]["train_bce"].append(bce["train_sigma"])
        out["classifier"]["test_bce_initial"].append(bce["test_sigma_initial"])
        out["classifier"]["step_s"].append(bce["step_s"])
        pre = bce["run_dir"]
        frozen = {"name": "adam", "options": {"learning_rate": 0.02},
                  "groups": {"nn_score": {"name": "sgd", "options": {"learning_rate": 0.0}}},
                  "steps": args.steps}
        runs = {
            "cuts_mbjj": config("agc_ttbar", args.events, seed, args.steps),
            "nn_bce": config("agc_ttbar_nn", args.events, seed, args.steps,
                             init={"from": str(pre)}, optimiser=frozen),
        }
        for name, data in runs.items():
            r = one_run(data, here, name)
            _record(out[name], r)
            step_s["cuts" if name == "cuts_mbjj" else "nn"].append(r["step_s"])
        end = config("agc_ttbar_nn", args.events, seed, args.steps,
                     init={"from": out["nn_bce"]["run_dirs"][-1]})
        r = one_run(end, here, "nn_end_to_end")
        _record(out["nn_end_to_end"], r)
        step_s["nn"].append(r["step_s"])
    out["step_s"] = {k: float(np.median(v)) for k, v in step_s.items()}
    out["wall_s"] = time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    print(json.dumps({v: out[v]["test_sigma"] for v in variants} | {"step_s": out["step_s"]}))
    return out


def _record(into: dict, r: dict) -> None:
    for k in ("test_sigma", "train_sigma", "test_sigma_initial", "cuts"):
        into[k].append(r[k])
    into["run_dirs"].append(r["run_dir"])


if __name__ == "__main__":
    main()
