"""Trainable bin edges (``binning: {..., trainable: true}``): ordered by construction, the
soft and the hard histogram on the same edges (``np.histogram``), gradients in the edges'
parameters (finite differences), every execution mode, and the run directory."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import (
    ROOT,
    default_config_dict,
    fused_and_reverse,
    whole_and_resumed,
    write_config,
)

from diffana import learned
from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.exceptions import ConfigError
from diffana.histogram import trainable_edges, width_parameters

GROUP = "signal_region_edges"


def edges_config(**extra) -> dict:
    data = default_config_dict(3_000)
    data["regions"]["signal_region"]["binning"] = {"bins": 6, "low": 0.0, "high": 1500.0,
                                                   "trainable": True}
    data["regions"]["signal_region"]["bandwidth"] = 60.0
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def held():
    return Analysis(load_dict(edges_config()), ROOT / "configs", progress=False)


def moved(ana) -> dict:
    """The initial parameters with the edges moved away from a regular binning."""
    p = ana.initial_params()
    shift = np.array([0.3, -0.4, 0.1, 0.5, -0.2, 0.0])
    return {**p, GROUP: {"weights": p[GROUP]["weights"] + shift}}


def test_edges_are_ordered_between_fixed_ends():
    np.testing.assert_allclose(np.asarray(trainable_edges(width_parameters([0, 1, 3, 7]), 0, 7)),
                               [0, 1, 3, 7], rtol=1e-15, atol=1e-14)
    rng = np.random.default_rng(0)
    for _ in range(20):
        e = np.asarray(trainable_edges(rng.normal(scale=5, size=8), -2.0, 3.0))
        assert e[0] == -2.0 and e[-1] == 3.0 and np.all(np.diff(e) > 0)


def test_edges_are_a_parameter_group(held):
    space = held.space
    assert space.binnings == {"signal_region": GROUP} and space.networks == []
    p = held.initial_params()
    np.testing.assert_allclose(np.asarray(trainable_edges(p[GROUP]["weights"], 0.0, 1500.0)),
                               np.linspace(0, 1500, 7), rtol=1e-14)
    assert space.group_slices()[GROUP] == slice(3, 9)
    assert space.unit_names[3] == f"{GROUP}[0]"


def test_hard_twin_equals_np_histogram_on_the_same_edges(held):
    p = moved(held)
    edges = np.asarray(trainable_edges(p[GROUP]["weights"], 0.0, 1500.0))
    assert not np.allclose(edges, np.linspace(0, 1500, 7))
    hists = held.hard_histograms(p, part="all")
    events = held.region_events(p, hard=True)
    for sample in ("ttbar", "wjets"):
        x, w = (np.asarray(a) for a in events[sample]["signal_region"])
        h = hists["signal_region"][sample]
        np.testing.assert_array_equal(h.axes[0].edges, edges)
        expected, _ = np.histogram(x, bins=edges, weights=w)
        np.testing.assert_allclose(h.values(), expected, rtol=1e-12)
    # the soft histogram at a narrow kernel is the hard one on the same edges
    data = edges_config()
    data["regions"]["signal_region"]["bandwidth"] = 1e-3
    data["parameters"] = {k: {**v, "temperature": 1e-6} for k, v in data["parameters"].items()}
    data["selection"] = [{**r, "temperature": 1e-6} if "temperature" in r else r
                         for r in data["selection"]]
    narrow = Analysis(load_dict(data), ROOT / "configs", progress=False)
    soft = narrow.yields(p)["signal_region"]["ttbar"]["nominal"] - 1.0  # the floor
    hard = narrow.hard_histograms(p, part="all")["signal_region"]["ttbar"].values()
    np.testing.assert_allclose(np.asarray(soft), hard, rtol=1e-6)


def test_gradient_in_the_edges_matches_finite_differences(held):
    p = moved(held)
    u0 = np.asarray(held.to_unit(p))
    _, grad = held.loss_and_grad(u0, p)
    grad = np.asarray(grad)
    checked = 0
    for i in range(held.space.size):
        h = 1e-6
        up, down = u0.copy(), u0.copy()
        up[i] += h
        down[i] -= h
        fd = (float(held.loss_and_grad(up, p)[0]) - float(held.loss_and_grad(down, p)[0])) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-8), held.space.unit_names[i]
        checked += i >= 3 and abs(fd) > 1e-4
    assert checked >= 3
    # a common shift of the parameters moves no edge
    assert abs(grad[3:].sum()) < 1e-9 * np.abs(grad[3:]).max()


def test_every_gradient_mode_agrees(held):
    p = moved(held)
    u = held.to_unit(p)
    fused, reverse = fused_and_reverse(held, u, p)
    streamed = Analysis(load_dict(edges_config(streaming=True, chunk_size=1_000,
                                               lowered_cache=False)), ROOT / "configs",
                        progress=False)
    stream = streamed.loss_and_grad(u, p)
    for other in (reverse, stream):
        assert float(other[0]) == pytest.approx(float(fused[0]), rel=1e-9)
        np.testing.assert_allclose(np.asarray(other[1]), np.asarray(fused[1]), rtol=1e-9,
                                   atol=1e-9 * np.abs(np.asarray(fused[1])).max())
    assert streamed.hard_objective(p) == pytest.approx(held.hard_objective(p), rel=1e-12)


def test_no_recompilation_across_steps(held, caplog):
    import logging

    p = held.initial_params()
    u = np.asarray(held.to_unit(p))
    held.loss_and_grad(u, p)
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        caplog.clear()
        for k in range(3):
            jax.block_until_ready(held.loss_and_grad(u + 0.01 * (k + 1), p))
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]


def test_run_writes_the_edges_and_init_from_keeps_them(tmp_path):
    from diffana.run import run

    data = edges_config()
    data["optimiser"] = {"name": "adam", "options": {"learning_rate": 0.02}, "steps": 3,
                         "groups": {GROUP: {"name": "adam", "options": {"learning_rate": 0.2}}}}
    run(write_config(tmp_path / "edges.yaml", data), out=tmp_path / "run", progress=False)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    group = written["parameter_groups"]["groups"][GROUP]
    edges = np.array(group["edges"])
    assert group["weights"] == 6 and group["gradient_norm"] > 0
    assert edges[0] == 0.0 and edges[-1] == 1500.0 and np.all(np.diff(edges) > 0)
    assert not np.allclose(edges, np.linspace(0, 1500, 7))
    found = learned.load(tmp_path / "run")
    np.testing.assert_allclose(np.asarray(trainable_edges(found[GROUP]["weights"], 0, 1500)),
                               edges, rtol=1e-15)
    # the hard histograms of the final parameters are on the final edges
    import uproot

    with uproot.open(tmp_path / "run" / "histograms.root") as f:
        np.testing.assert_allclose(f["final/signal_region/ttbar"].axis().edges(), edges,
                                   rtol=1e-15)
        np.testing.assert_allclose(f["initial/signal_region/ttbar"].axis().edges(),
                                   np.linspace(0, 1500, 7), rtol=1e-14)
    data["init"] = {"from": str(tmp_path / "run")}
    p = Analysis(load_dict(data), ROOT / "configs", progress=False).initial_params()
    np.testing.assert_array_equal(np.asarray(p[GROUP]["weights"]), found[GROUP]["weights"])
    # a run without trainable edges starts this one from the configured edges
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "results.json").write_text(json.dumps({"params_final": written["params_final"]}))
    data["init"] = {"from": str(plain)}
    p = Analysis(load_dict(data), ROOT / "configs", progress=False).initial_params()
    np.testing.assert_allclose(np.asarray(trainable_edges(p[GROUP]["weights"], 0, 1500)),
                               np.linspace(0, 1500, 7), rtol=1e-14)


def test_a_group_name_taken_is_a_config_error():
    data = edges_config()
    data["parameters"][GROUP] = {"value": 1.0, "bounds": [0.0, 2.0]}
    with pytest.raises(ConfigError) as err:
        load_dict(data, source="e.yaml")
    assert ("regions.signal_region.binning.trainable: the edges' parameter group "
            "'signal_region_edges' is also the name" in str(err.value))
    assert "\n" not in str(err.value)


def test_dask_agrees(held):
    pytest.importorskip("distributed")
    ana = Analysis(load_dict(edges_config(executor={"kind": "dask", "workers": 1},
                                          chunk_size=1_500)), ROOT / "configs", progress=False)
    try:
        p = moved(held)
        u = held.to_unit(p)
        (ld, gd), (lh, gh) = ana.loss_and_grad(u, p), held.loss_and_grad(u, p)
        assert float(ld) == pytest.approx(float(lh), rel=1e-9)
        np.testing.assert_allclose(np.asarray(gd), np.asarray(gh), rtol=1e-9,
                                   atol=1e-9 * np.abs(np.asarray(gh)).max())
        hists = ana.hard_histograms(p)
        np.testing.assert_array_equal(hists["signal_region"]["ttbar"].axes[0].edges,
                                      held.hard_histograms(p)["signal_region"]["ttbar"].axes[0].edges)
        assert ana.hard_objective(p) == pytest.approx(held.hard_objective(p), rel=1e-10)
    finally:
        ana.close()


@pytest.mark.long  # 30 s: three runs (.ci/run runs it)
def test_a_resumed_run_and_evaluate_keep_the_edges(tmp_path, monkeypatch):
    """A network histogrammed on trainable edges: a run interrupted at step 2 and resumed
    ends where the uninterrupted run does (edges included); ``diffana evaluate`` scores new
    files with it."""
    from test_mlp import mlp_config

    from diffana.evaluate import evaluate
    from diffana.generate import ensure_generated

    data = mlp_config()
    data["regions"]["signal_region"]["binning"]["trainable"] = True
    data["optimiser"]["steps"] = 3
    group = "signal_region_edges"
    path = write_config(tmp_path / "nn.yaml", data)
    whole, resumed = whole_and_resumed(path, tmp_path, monkeypatch)
    assert resumed["objective_final"] == whole["objective_final"]
    edges = [json.loads((tmp_path / d / "results.json").read_text())["parameter_groups"]
             ["groups"][group]["edges"] for d in ("whole", "cut")]
    assert edges[0] == edges[1] and edges[0] != list(np.linspace(0, 1, 6))
    np.testing.assert_array_equal(learned.load(tmp_path / "cut")[group]["weights"],
                                  learned.load(tmp_path / "whole")[group]["weights"])
    files = [ensure_generated("ttbar_vs_wjets", 3_000, 1) / "ttbar.root"]
    branches = evaluate(tmp_path / "whole", files, tmp_path / "scores.root")
    assert np.all((branches["nn_score"] > 0) & (branches["nn_score"] < 1))


@pytest.mark.long  # 20 s: the awkward engine (.ci/run runs it)
def test_awkward_engine_agrees(held):
    ana = Analysis(held.cfg, ROOT / "configs", engine="awkward", progress=False)
    p = moved(held)
    u = held.to_unit(p)
    (la, ga), (lh, gh) = ana.loss_and_grad(u, p), held.loss_and_grad(u, p)
    assert float(la) == pytest.approx(float(lh), rel=1e-10)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gh), rtol=1e-8,
                               atol=1e-10 * np.abs(np.asarray(gh)).max())
    assert ana.hard_objective(p) == pytest.approx(held.hard_objective(p), rel=1e-10)
