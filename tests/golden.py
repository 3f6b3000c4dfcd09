"""Golden values: what the shipped configurations give, held bitwise across refactors.

For each case (a configuration × engine × gradient mode × held/streamed × local/Dask) this
records, at the initial parameters and after 3 optimiser steps: the objective, the loss and
its gradient, the KDE yields, the hard objective and the sensitivity. Only the public
``Analysis`` API is used, so the same script runs on any version of the code.

    python tests/golden.py --write            # record tests/data/golden.json (all cases)
    python tests/golden.py CASE [CASE ...]    # print the values of some cases as JSON

``tests/test_golden.py`` compares against the recorded values with ``==`` on every float
(JSON keeps a float64 exactly: ``repr`` round-trips).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import yaml

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "data" / "golden.json"
STEPS = 3

# name: (config file, events generated, overrides)
CASES: dict[str, tuple[str, int, dict]] = {
    "ttbar-compiled-fused": ("ttbar_vs_wjets.yaml", 5_000, {"gradient": "fused", "chunk_size": 2048}),
    "ttbar-compiled-forward": ("ttbar_vs_wjets.yaml", 5_000, {"gradient": "forward", "chunk_size": 2048}),
    "ttbar-compiled-reverse": ("ttbar_vs_wjets.yaml", 5_000, {"gradient": "reverse", "chunk_size": 2048}),
    "ttbar-streamed-forward": ("ttbar_vs_wjets.yaml", 5_000, {"gradient": "forward", "chunk_size": 2048,
                                                              "streaming": True}),
    "ttbar-streamed-reverse": ("ttbar_vs_wjets.yaml", 5_000, {"gradient": "reverse", "chunk_size": 2048,
                                                              "streaming": True}),
    "ttbar-dask-forward": ("ttbar_vs_wjets.yaml", 5_000, {"gradient": "forward", "chunk_size": 2048,
                                                          "executor": {"kind": "dask", "workers": 2}}),
    "ttbar-awkward": ("ttbar_vs_wjets.yaml", 5_000, {"engine": "awkward"}),
    "agc-compiled-fused": ("agc_ttbar.yaml", 3_000, {"gradient": "fused"}),
    "agc-compiled-forward": ("agc_ttbar.yaml", 3_000, {"gradient": "forward", "chunk_size": 2048}),
    "agc-compiled-reverse": ("agc_ttbar.yaml", 3_000, {"gradient": "reverse", "chunk_size": 2048}),
    "agc-streamed-forward": ("agc_ttbar.yaml", 3_000, {"gradient": "forward", "chunk_size": 2048,
                                                       "streaming": True}),
    "agc-dask-reverse": ("agc_ttbar.yaml", 3_000, {"gradient": "reverse", "chunk_size": 2048,
                                                   "executor": {"kind": "dask", "workers": 2}}),
    "agc-awkward": ("agc_ttbar.yaml", 3_000, {"engine": "awkward"}),
}


def config(case: str):
    from diffana.config import load_dict

    name, events, overrides = CASES[case]
    path = ROOT / "configs" / name
    data = yaml.safe_load(path.read_text())
    data["generate"]["events"] = events
    data.update(overrides)
    return load_dict(data, source=case, base_dir=path.parent)


def _floats(tree):
    """Every array leaf as a (nested) list of Python floats."""
    if isinstance(tree, dict):
        return {str(k): _floats(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64).tolist()


def _point(ana, params: dict, u) -> dict:
    loss, grad = ana.loss_and_grad(u, params)
    return {
        "u": _floats(u),
        "objective": _floats(ana.objective(params)),
        "loss": _floats(loss),
        "grad": _floats(grad),
        "yields": _floats(ana.yields(params)),
        "hard_objective": float(ana.hard_objective(params)),
        "sensitivity": _floats(ana.sensitivity(params)),
    }


def values(case: str) -> dict:
    """The golden values of one case."""
    from diffana.analysis import Analysis
    from diffana.optimise import optimise

    ana = Analysis(config(case), ROOT / "configs", progress=False)
    try:
        p0 = ana.initial_params()
        u0 = ana.to_unit(p0)
        out = {"initial": _point(ana, p0, u0)}
        res = optimise(lambda u: ana.loss_and_grad(u, p0), u0, "adam", {"learning_rate": 0.05},
                       steps=STEPS, progress=False)
        u = res.params
        out["after_steps"] = _point(ana, ana.from_unit(u, p0), u)
        return out
    finally:
        ana.close()


def main(argv: list[str]) -> None:
    if argv[:1] == ["--write"]:
        cases = argv[1:] or list(CASES)
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        for case in cases:
            print(case, file=sys.stderr)
            golden[case] = values(case)
            GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    print(json.dumps({case: values(case) for case in argv}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
