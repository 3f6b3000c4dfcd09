"""End to end: the CLI run directory, the optimisation against a grid scan, the examples."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pyhf
import pytest
from conftest import ROOT, default_config_dict, write_config

from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.optimise import optimise
from diffana.run import grid_scan


@pytest.mark.long  # 20 s: a full run (.ci/run runs it)
def test_cli_run_directory(tmp_path):
    data = default_config_dict(5_000)
    del data["inference"]  # on, and --no-inference switches it off
    cfg_path = write_config(tmp_path / "small.yaml", data)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "diffana.cli", "run", str(cfg_path), "--steps", "4", "--out",
         str(out), "--seed", "7", "--quiet", "--no-inference"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "sensitivity" in proc.stdout and "objective (hard cuts)" in proc.stdout
    for name in ("config.resolved.yaml", "history.csv", "results.json", "workspace.json",
                 "histograms.root", "objective_history.png", "histograms.png", "sensitivity.png"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    for key in ("objective_initial", "objective_final", "params_initial", "params_final",
                "engine", "n_events", "wall_seconds", "sensitivity"):
        assert key in res
    assert set(res["hard"]) == {"objective_initial", "objective_final"}
    assert res["engine"] == "compiled" and res["seed"] == 7
    assert res["inference"] is None and not (out / "inference.json").exists()
    assert "enabled: false" in (out / "config.resolved.yaml").read_text()
    assert res["n_events"] == {"ttbar": 1000, "wjets": 4000}
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "objective", "jet_pt_min", "btag_threshold", "lepton_pt_min"]
    assert len(rows) == 1 + 5
    assert float(rows[1][1]) == pytest.approx(res["objective_initial"], rel=1e-12)
    assert float(rows[-1][1]) == pytest.approx(res["objective_final"], rel=1e-12)
    # the sensitivity table sums to the gradient and names every region/sample
    assert set(res["sensitivity"]["btag_threshold"]) == {"signal_region/ttbar", "signal_region/wjets"}
    # the workspace validates and pyhf can fit it as it is
    ws = pyhf.Workspace(json.loads((out / "workspace.json").read_text()))
    model = ws.model()
    best = pyhf.infer.mle.fit(ws.data(model), model)
    assert best[model.config.poi_index] == pytest.approx(1.0, abs=1e-3)


def test_optimisation_reaches_grid_optimum():
    """The optimised cuts' hard-cut Z0 is within 5 % of the best Z0 of a grid scan."""
    cfg = load_dict(default_config_dict(20_000))
    ana = Analysis(cfg, ROOT / "configs", progress=False)
    p0 = ana.initial_params()
    res = optimise(lambda u: ana.loss_and_grad(u, p0), ana.to_unit(p0), cfg.optimiser.name,
                   cfg.optimiser.options, steps=cfg.optimiser.steps, progress=False)
    p_final = ana.from_unit(jnp.asarray(res.params), p0)
    hard_initial, hard_final = ana.hard_objective(p0), ana.hard_objective(p_final)
    assert hard_final > hard_initial
    _, grid_best, values = grid_scan(ana, 8)
    assert values.size == 512
    assert hard_final >= 0.95 * grid_best, (hard_final, grid_best)


def run_example(*cmd, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=env)


def test_example_awkward_jax(tmp_path):
    proc = run_example(sys.executable, str(ROOT / "examples" / "awkward_jax_gradients.py"),
                       tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "jvp agrees with finite differences" in proc.stdout


@pytest.mark.long  # 20 s: the example script (.ci/run runs it)
def test_example_python_api(tmp_path):
    proc = run_example(sys.executable, str(ROOT / "examples" / "python_api.py"), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "optimised cuts" in proc.stdout and "∂Z0/∂btag_threshold" in proc.stdout


@pytest.mark.long  # ~30 s: the example script, inference included (.ci/run runs it)
def test_example_yaml_run(tmp_path):
    proc = run_example("bash", str(ROOT / "examples" / "yaml_run.sh"), str(tmp_path / "out"),
                       tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "results.json").is_file()


@pytest.mark.slow
def test_cli_run_awkward_engine(tmp_path):
    cfg_path = write_config(tmp_path / "small.yaml", default_config_dict(2_000))
    proc = subprocess.run(
        [sys.executable, "-m", "diffana.cli", "run", str(cfg_path), "--steps", "2", "--engine",
         "awkward", "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["engine"] == "awkward" and res["steps_done"] == 2


def test_resolved_config_runs_again(tmp_path):
    """A run directory's config.resolved.yaml runs again as it is, from anywhere: its plugin
    files and input files are absolute paths."""
    import shutil

    from diffana.config import load
    from diffana.run import run

    data = default_config_dict(2_000)
    plugin = tmp_path / "plugins" / "extra.py"  # a plugin named relative to the config
    plugin.parent.mkdir()
    plugin.write_text("from diffana.observe import register_observable\n\n\n"
                      "@register_observable('resolved_test_count', requires=('collection',))\n"
                      "def count(ops, spec, weights, plan):\n"
                      "    return ops.sum(plan.collections[spec.collection].root, "
                      "weights[spec.collection])\n")
    data["imports"] = ["../plugins/extra.py"]
    data["observables"]["n_jets"] = {"kind": "resolved_test_count", "collection": "jets"}
    (tmp_path / "configs").mkdir()
    cfg = write_config(tmp_path / "configs" / "c.yaml", data)
    first = run(cfg, steps=1, out=tmp_path / "first", progress=False, echo=None)
    resolved = tmp_path / "elsewhere" / "config.resolved.yaml"
    resolved.parent.mkdir()
    shutil.copy(tmp_path / "first" / "config.resolved.yaml", resolved)
    assert load(resolved).imports == [str(plugin.resolve())]
    again = run(resolved, steps=1, out=tmp_path / "again", progress=False, echo=None)
    assert again["objective_final"] == first["objective_final"]
