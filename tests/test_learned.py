"""A run's network in its run directory (``parameters.npz``) and ``init: {from: RUN_DIR}``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, default_config_dict, write_config
from test_mlp import mlp_config

from diffana import learned
from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.exceptions import ConfigError
from diffana.run import run


@pytest.fixture(scope="module")
def nn_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nn")
    res = run(write_config(folder / "nn.yaml", mlp_config()), steps=2, out=folder / "run",
              progress=False)
    return folder / "run", res


def test_run_directory_holds_the_network(nn_run):
    run_dir, res = nn_run
    written = json.loads((run_dir / "results.json").read_text())
    assert written["parameter_groups"]["file"] == "parameters.npz"
    sizes = dict(written["parameter_groups"]["groups"]["nn_score"])
    assert sizes.pop("gradient_norm") > 0
    assert sizes == {"weights": 4 * 6 + 6 + 6 * 5 + 5 + 5 + 1, "shift": 4, "scale": 4}
    from diffana.report import summary

    norm = written["parameter_groups"]["groups"]["nn_score"]["gradient_norm"]
    assert any(line.startswith(f"nn_score: {sizes['weights']} weights, |∂objective/∂w|")
               and line.rstrip().endswith(f"{norm:.4g}") for line in summary(written).splitlines())
    assert set(written["params_final"]) == {"jet_pt_min", "btag_threshold", "lepton_pt_min"}
    found = learned.load(run_dir)
    for name, value in written["params_final"].items():
        assert found[name] == value
    start = Analysis(load_dict(mlp_config()), ROOT / "configs", progress=False).initial_params()
    # trained: the weights moved from their initial values; the standardisation did not
    assert not np.allclose(found["nn_score"]["weights"], np.asarray(start["nn_score"]["weights"]))
    np.testing.assert_array_equal(found["nn_score"]["shift"],
                                  np.asarray(start["nn_score"]["shift"]))


def test_init_from_starts_where_the_other_run_ended(nn_run):
    run_dir, res = nn_run
    data = mlp_config()
    data["init"] = {"from": str(run_dir)}
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    p = ana.initial_params()
    found = learned.load(run_dir)
    for k in ("weights", "shift", "scale"):
        np.testing.assert_array_equal(np.asarray(p["nn_score"][k]), found["nn_score"][k])
    assert float(p["lepton_pt_min"]) == res["params_final"]["lepton_pt_min"]
    # the soft objective there is the one the other run ended with (same events, same split)
    assert float(ana.objective(p)) == pytest.approx(res["objective_final"], rel=1e-9)


def test_init_from_a_network_of_another_shape_is_an_error(nn_run):
    data = mlp_config()
    data["observables"]["nn_score"]["options"]["hidden"] = [7]
    data["init"] = {"from": str(nn_run[0])}
    with pytest.raises(ConfigError, match="init.from: the network 'nn_score' of .* has another "
                                          "shape"):
        Analysis(load_dict(data), ROOT / "configs", progress=False)


def test_init_from_a_directory_without_parameters_is_an_error(tmp_path):
    data = default_config_dict(2_000)
    data["init"] = {"from": str(tmp_path)}
    with pytest.raises(ConfigError, match="init.from: .* holds no parameters") as err:
        Analysis(load_dict(data), ROOT / "configs", progress=False)
    assert "\n" not in str(err.value)


def test_init_from_a_cut_only_run_takes_its_final_cuts(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(
        {"params_final": {"jet_pt_min": 41.5, "btag_threshold": 0.4, "lepton_pt_min": 25.0}}))
    data = default_config_dict(2_000)
    data["init"] = {"from": str(tmp_path)}
    p = Analysis(load_dict(data), ROOT / "configs", progress=False).initial_params()
    assert float(p["jet_pt_min"]) == 41.5 and float(p["btag_threshold"]) == 0.4


def test_evaluate_scores_new_files_with_the_trained_network(nn_run, tmp_path):
    import uproot

    from diffana.evaluate import evaluate
    from diffana.generate import ensure_generated

    run_dir, _ = nn_run
    files = [ensure_generated("ttbar_vs_wjets", 3_000, 1) / "ttbar.root"]
    out = tmp_path / "scores.root"
    branches = evaluate(run_dir, files, out)
    with uproot.open(out) as f:
        tree = f["Events"]
        assert tree.num_entries == uproot.open(files[0])["Events"].num_entries
        score = tree["nn_score"].array(library="np")
        selected = tree["selected_signal_region"].array(library="np")
    np.testing.assert_array_equal(score, branches["nn_score"])
    assert np.all((score > 0) & (score < 1)) and 0 < selected.sum() < len(selected)
    # the same scores as the run's own hard evaluation of these events (its training and
    # test parts together: all events of the sample)
    data = mlp_config()
    data["init"] = {"from": str(run_dir)}
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    events = dict(ana.executor.event_parts(ana.initial_params(), True, part="all"))
    x, w = events[0]["signal_region"]  # set 0: ttbar
    np.testing.assert_allclose(score, np.asarray(x), rtol=1e-12)
    np.testing.assert_array_equal(selected, (np.asarray(w[0]) > 0).astype(np.int8))
