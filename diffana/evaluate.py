"""``diffana evaluate``: a finished run's networks on new files, a score per event.

::

    diffana evaluate RUN_DIR FILES... --out scores.root

The run directory's configuration (``config.resolved.yaml``) says how the events become the
networks' inputs; its ``parameters.npz`` holds the final cuts, weights and input
standardisation. Every event of the files is scored (no preselection, no split) with the
final cuts hard, as the run's hard evaluation does: ``scores.root`` has a tree ``Events``
with a branch per network (its score) and ``selected_<region>`` (1 where the event passes the
region's hard selection at the final cuts, else 0), one entry per event, in file order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import uproot
import yaml

from diffana import learned
from diffana.exceptions import DiffanaError
from diffana.files import replacing

SAMPLE = "evaluated"


def evaluation_config(data: dict, files: list[Path]) -> dict:
    """A run's configuration turned into one that reads ``files`` as one sample, with a
    region per network (its score, no region selection) and each of the run's regions."""
    networks = [n for n, o in data["observables"].items() if o["kind"] == "mlp"]
    if not networks:
        raise DiffanaError("evaluate: the run's configuration has no network (kind: mlp) "
                           "to evaluate")
    data = {k: v for k, v in data.items() if k not in ("generate", "split", "init", "variations")}
    paths = [str(Path(f).resolve()) for f in files]
    # the model needs a background: the same files again (never evaluated)
    data["samples"] = {SAMPLE: {"files": paths, "normalisation": "none"},
                       f"{SAMPLE}_background": {"files": paths, "normalisation": "none"}}
    data["preselect"] = False
    data["streaming"] = False
    data["executor"] = {"kind": "local"}
    regions = {f"score_{n}": {"observable": n, "binning": {"bins": 1, "low": 0.0, "high": 1.0}}
               for n in networks}
    for name, region in data["regions"].items():  # the selection (the binning unused)
        regions[f"selected_{name}"] = {**region, "observable": networks[0],
                                       "binning": {"bins": 1, "low": 0.0, "high": 1.0}}
    data["regions"] = regions
    data["model"] = {"signal": [SAMPLE], "poi": data["model"].get("poi", "mu")}
    data["objective"] = {"kind": "poi_uncertainty"}
    data["optimiser"] = {**data.get("optimiser", {}), "groups": {}}
    return data


def evaluate(run_dir: str | Path, files: list[str | Path], out: str | Path) -> dict:
    """Score every event of ``files`` with the networks of the run in ``run_dir`` and write
    ``out`` (ROOT). Returns ``{branch: values}``.

    Raises:
        DiffanaError: no such run, a run without a network, or files it cannot read.
    """
    from diffana.analysis import Analysis
    from diffana.config import load_dict

    run_dir = Path(run_dir)
    resolved = run_dir / "config.resolved.yaml"
    if not resolved.is_file():
        raise DiffanaError(f"evaluate: {run_dir} holds no config.resolved.yaml (expected the "
                           "directory of a finished diffana run)")
    data = evaluation_config(yaml.safe_load(resolved.read_text()), [Path(f) for f in files])
    cfg = load_dict(data, source=str(resolved), base_dir=run_dir)
    ana = Analysis(cfg, run_dir, progress=False)
    found = learned.load(run_dir, key="evaluate")
    params = learned.start_from(ana.initial_params(), found, str(run_dir), key="evaluate")
    events = ana.region_events(params, hard=True)[SAMPLE]
    branches = {}
    for region, (x, w) in events.items():
        if region.startswith("score_"):
            branches[region.removeprefix("score_")] = np.asarray(x, dtype=np.float64)
        else:
            branches[region] = (np.asarray(w) > 0).astype(np.int8)
    with replacing(out) as tmp:
        with uproot.recreate(tmp) as f:
            f["Events"] = branches
    return branches
