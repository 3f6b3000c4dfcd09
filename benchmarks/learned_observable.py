"""A learned observable against m_bjj on the AGC, judged on held-out events.

For each seed (the split of the events into training and test halves, and the network's
initial weights), three runs of the AGC model with all its systematics, each optimising on
the training half and evaluated with hard cuts and hard histograms on the test half:

* ``cuts_mbjj``: ``configs/agc_ttbar.yaml`` as it is (4j2b histograms m_bjj), the cuts
  optimised on σ(ttbar_norm);
* ``nn_bce``: ``configs/agc_ttbar_nn.yaml`` (4j2b histograms ``nn_score``, a network of
  H_T, m_bjj and the four leading jets' pT), the network first trained as a classifier
  (event-weighted binary cross-entropy, ttbar against every other nominal sample, on the
  training events of 4j2b at the initial cuts), then frozen while the cuts are optimised;
* ``nn_end_to_end``: ``nn_bce``'s end point, then the network and the cuts trained
  together on σ(ttbar_norm) (``init: {from: RUN_DIR}``).

Writes ``{"events", "seeds", "<variant>": {"test_sigma": [...], "train_sigma": [...],
"cuts": [...], "run_dirs": [...]}, "step_s": {"cuts": s, "nn": s}}`` (σ: the relative
uncertainty of ttbar_norm, the hard evaluation; each run directory holds the hard
histograms, ``histograms.root``).

    python benchmarks/learned_observable.py --events 200000 --seeds 3 --json out.json
    python benchmarks/learned_observable.py --quick    # 20 k events, 1 seed, a few minutes
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from diffana import learned, network
from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.observe import mlp_shape
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


def bce_pretrain(events: int, seed: int, out: Path, epochs: int) -> Path:
    """Train the network as a classifier on the training events of 4j2b at the initial cuts
    and write its weights (and the inputs' standardisation) as a run directory's
    ``parameters.npz``."""
    data = config("agc_ttbar_nn", events, seed, 0)
    sr = data["regions"]["4j2b"]
    # one region per input, with the 4j2b selection: each event's inputs and weight
    data["regions"] = {f"in_{x}": {**sr, "observable": x,
                                   "binning": {"bins": 4, "low": 0.0, "high": 2000.0}}
                       for x in INPUTS}
    data["model"]["systematics"] = []
    data["model"].pop("pseudodata", None)
    ana = Analysis(load_dict(data, base_dir=ROOT / "configs"), ROOT / "configs", progress=False)
    p = ana.initial_params()
    events_of = ana.region_events(p)  # the training part: weights × 2
    xs, ws, ys = [], [], []
    for sample in ana.cfg.nominal_samples:
        per = events_of[sample]
        xs.append(np.stack([np.asarray(per[f"in_{x}"][0]) for x in INPUTS], axis=1))
        ws.append(np.asarray(per[f"in_{INPUTS[0]}"][1]))
        ys.append(np.full(len(ws[-1]), float(sample == "ttbar")))
    x, w, y = np.concatenate(xs), np.concatenate(ws), np.concatenate(ys)
    shift = np.average(x, axis=0, weights=w)
    scale = np.sqrt(np.average((x - shift) ** 2, axis=0, weights=w))
    # the classes weighted equally (event weights within each)
    w = np.where(y == 1, w / w[y == 1].sum(), w / w[y == 0].sum())
    shape = mlp_shape(ana.cfg.observables["nn_score"])
    weights = jnp.asarray(p["nn_score"]["weights"])
    standard = jnp.asarray((x - shift) / scale)

    def loss(v):  # event-weighted binary cross-entropy of the logit
        z = network.logit(shape, "relu", v, standard)
        return jnp.sum(w * (jax.nn.softplus(-z) * y + jax.nn.softplus(z) * (1 - y)))

    opt = optax.adam(3e-3)

    @jax.jit
    def step(v, state):
        updates, state = opt.update(jax.grad(loss)(v), state, v)
        return optax.apply_updates(v, updates), state

    state = opt.init(weights)
    for _ in range(epochs):
        weights, state = step(weights, state)
    out.mkdir(parents=True, exist_ok=True)
    scalars = {n: float(v) for n, v in p.items() if not isinstance(v, dict)}
    learned.save(out, {**scalars, "nn_score": {"weights": np.asarray(weights), "shift": shift,
                                               "scale": scale}})
    return out


def one_run(data: dict, folder: Path, name: str) -> dict:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    res = run(path, out=folder / name, progress=False)
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
                                        "cuts", "run_dirs")} for v in variants}}
    step_s: dict = {"cuts": [], "nn": []}
    start = time.perf_counter()
    for seed in range(args.seeds):
        here = folder / f"seed{seed}"
        here.mkdir(parents=True, exist_ok=True)
        pre = bce_pretrain(args.events, seed, here / "bce", args.epochs)
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
