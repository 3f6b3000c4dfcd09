"""A learned observable (``kind: mlp``): the network, its standardisation, gradients through
the whole chain (finite differences), every executor, no recompilation, bad input."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from conftest import ROOT, default_config_dict, fused_and_reverse

from diffana import network
from diffana.analysis import Analysis, prepare
from diffana.config import load_dict
from diffana.exceptions import ConfigError

N_EVENTS = 3_000
INPUTS = ["ht", "lepton_pt", "njets", "jet0_pt"]


def mlp_config(**extra) -> dict:
    data = default_config_dict(N_EVENTS)
    data["observables"]["njets"] = {"kind": "count", "collection": "jets"}
    data["observables"]["jet0_pt"] = {"kind": "nth", "collection": "jets", "field": "pt"}
    data["observables"]["nn_score"] = {"kind": "mlp", "options": {"inputs": INPUTS,
                                                                  "hidden": [6, 5], "seed": 1}}
    data["regions"]["signal_region"].update(observable="nn_score", bandwidth=0.1,
                                            binning={"bins": 5, "low": 0.0, "high": 1.0})
    data["split"] = {"test_fraction": 0.5, "seed": 0}
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def held():
    return Analysis(load_dict(mlp_config()), ROOT / "configs", progress=False)


def test_network_equals_numpy_forward_pass():
    shape = network.Shape(3, (4, 2))
    w = network.init(shape, seed=5)
    assert w.shape == (shape.size,) == (3 * 4 + 4 + 4 * 2 + 2 + 2 + 1,)
    x = np.random.default_rng(0).normal(size=(7, 3))
    shift, scale = np.array([0.1, -0.2, 0.3]), np.array([2.0, 0.5, 1.0])
    h = (x - shift) / scale
    for a, b in network.layers(shape, w)[:-1]:
        h = np.maximum(h @ np.asarray(a) + np.asarray(b), 0.0)
    a, b = network.layers(shape, w)[-1]
    expected = 1 / (1 + np.exp(-(h @ np.asarray(a) + np.asarray(b))[:, 0]))
    np.testing.assert_allclose(network.apply(shape, "relu", w, x, shift, scale), expected,
                               rtol=1e-13)


def test_weights_are_a_group_after_the_cuts(held):
    space = held.space
    assert list(space.groups) == ["nn_score"]
    assert space.size == 3 + network.Shape(4, (6, 5)).size
    slices = space.group_slices()
    assert slices["cuts"] == slice(0, 3) and slices["nn_score"] == slice(3, space.size)
    p = held.initial_params()
    u = held.to_unit(p)
    np.testing.assert_array_equal(np.asarray(u[3:]), np.asarray(p["nn_score"]["weights"]))
    back = held.from_unit(u, p)
    np.testing.assert_array_equal(np.asarray(back["nn_score"]["weights"]),
                                  np.asarray(p["nn_score"]["weights"]))
    lo, hi = space.unit_box()
    assert np.all(lo[:3] == 0) and np.all(np.isinf(lo[3:]))
    assert space.unit_names[3] == "nn_score[0]"


def test_standardisation_is_the_weighted_mean_and_width_of_training_events():
    """Each input's shift and scale against np.average over the per-event values (regions
    histogram the inputs, with no region selection: the weights are the training events'
    after the top-level soft selection)."""
    data = mlp_config()
    data["regions"] = {f"r_{x}": {"observable": x, "binning": {"bins": 3, "low": 0, "high": 2000},
                                  "bandwidth": 50.0, "floor": 1.0} for x in INPUTS}
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    p = ana.initial_params()
    events = ana.region_events(p)
    for i, x in enumerate(INPUTS):
        values = np.concatenate([np.asarray(events[s][f"r_{x}"][0]) for s in ("ttbar", "wjets")])
        w = np.concatenate([np.asarray(events[s][f"r_{x}"][1]) for s in ("ttbar", "wjets")])
        mean = np.average(values, weights=w)
        std = np.sqrt(np.average((values - mean) ** 2, weights=w))
        assert float(p["nn_score"]["shift"][i]) == pytest.approx(mean, rel=1e-9)
        assert float(p["nn_score"]["scale"][i]) == pytest.approx(std, rel=1e-7)


def test_gradient_in_network_weights_matches_finite_differences(held):
    p = held.initial_params()
    u0 = np.asarray(held.to_unit(p))
    loss, grad = held.loss_and_grad(u0, p)
    grad = np.asarray(grad)
    rng = np.random.default_rng(0)
    weights = 3 + rng.choice(held.space.size - 3, size=5, replace=False)
    biggest = 3 + int(np.argmax(np.abs(grad[3:])))
    checked = 0
    for i in [1, biggest, *weights]:
        h = 1e-6
        up, down = u0.copy(), u0.copy()
        up[i] += h
        down[i] -= h
        fd = (float(held.loss_and_grad(up, p)[0]) - float(held.loss_and_grad(down, p)[0])) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=2e-4, abs=1e-6 * max(1, abs(grad).max())), i
        checked += abs(fd) > 1e-3
    assert checked >= 3  # the check is not vacuous: some weights move the loss
    assert np.linalg.norm(grad[3:]) > 0


def test_every_gradient_mode_and_executor_agrees(held):
    p = held.initial_params()
    u = held.to_unit(p)
    fused, reverse = fused_and_reverse(held, u, p)
    streamed = Analysis(load_dict(mlp_config(streaming=True, chunk_size=1_000,
                                             lowered_cache=False)), ROOT / "configs",
                        progress=False)
    assert streamed.executor.gradient_mode == "reverse"  # many parameters: two passes
    ps = streamed.initial_params()
    np.testing.assert_allclose(np.asarray(ps["nn_score"]["shift"]),
                               np.asarray(p["nn_score"]["shift"]), rtol=1e-12)
    stream = streamed.loss_and_grad(streamed.to_unit(ps), ps)
    for other in (reverse, stream):
        assert float(other[0]) == pytest.approx(float(fused[0]), rel=1e-9)
        np.testing.assert_allclose(np.asarray(other[1]), np.asarray(fused[1]), rtol=1e-7,
                                   atol=1e-9 * np.abs(np.asarray(fused[1])).max())
    assert streamed.hard_objective(ps) == pytest.approx(held.hard_objective(p), rel=1e-10)


@pytest.mark.long  # 20 s: the awkward engine (.ci/run runs it)
def test_awkward_engine_agrees(held):
    """The objective (its gradient is the same chain: the cut-only tests hold it)."""
    ana = Analysis(held.cfg, ROOT / "configs", engine="awkward", progress=False)
    p = ana.initial_params()
    np.testing.assert_allclose(np.asarray(p["nn_score"]["scale"]),
                               np.asarray(held.initial_params()["nn_score"]["scale"]), rtol=1e-10)
    assert float(ana.objective(p)) == pytest.approx(float(held.objective(p)), rel=1e-10)


def test_no_recompilation_across_steps(held, caplog):
    p = held.initial_params()
    u = np.asarray(held.to_unit(p))
    held.loss_and_grad(u, p)  # compiled (or compiled already)
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        caplog.clear()
        for k in range(3):
            jax.block_until_ready(held.loss_and_grad(u + 0.01 * (k + 1), p))
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda o: o["nn_score"]["options"].update(inputs=["ht", "nope"]),
     "observables.nn_score.options.inputs[1]: 'nope' is not an observable defined before"),
    (lambda o: o["nn_score"]["options"].pop("inputs"), "observables.nn_score.options.inputs"),
    (lambda o: o["nn_score"]["options"].update(inputs=[]),
     "observables.nn_score.options.inputs: an mlp needs a list of one or more"),
    (lambda o: o["nn_score"]["options"].update(hidden=[4, 0]),
     "observables.nn_score.options.hidden"),
    (lambda o: o["nn_score"]["options"].update(activation="swish2"),
     "observables.nn_score.options.activation"),
])
def test_bad_network_is_a_one_line_config_error(change, fragment):
    data = mlp_config()
    change(data["observables"])
    with pytest.raises(ConfigError) as err:
        prepare(load_dict(data, source="nn.yaml"), source="nn.yaml")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_an_input_defined_after_the_network_is_an_error():
    data = mlp_config()
    obs = data["observables"]
    obs["late"] = {"kind": "count", "collection": "jets"}
    obs["nn_score"]["options"]["inputs"] = ["ht", "late"]
    obs["nn_score"] = obs.pop("nn_score")  # after "late" now: fine
    prepare(load_dict(data))
    obs["late"] = obs.pop("late")  # after the network: refused
    with pytest.raises(ConfigError, match=r"inputs\[1\]: 'late' is not an observable defined"):
        prepare(load_dict(data))


def test_trainable_bandwidth_matches_finite_differences():
    data = mlp_config()
    data["parameters"]["sr_bandwidth"] = {"value": 0.1, "bounds": [0.02, 0.5]}
    data["regions"]["signal_region"]["bandwidth"] = "sr_bandwidth"
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    i = ana.trainable.index("sr_bandwidth")
    p = ana.initial_params()
    u0 = np.asarray(ana.to_unit(p))
    grad = np.asarray(ana.loss_and_grad(u0, p)[1])
    h = 1e-6
    up, down = u0.copy(), u0.copy()
    up[i] += h
    down[i] -= h
    fd = (float(ana.loss_and_grad(up, p)[0]) - float(ana.loss_and_grad(down, p)[0])) / (2 * h)
    assert abs(fd) > 1e-3 and grad[i] == pytest.approx(fd, rel=1e-5)
    # the bandwidth is the parameter: a wider one gives other soft yields
    wide = {**p, "sr_bandwidth": p["sr_bandwidth"] * 3}
    assert not np.allclose(np.asarray(ana.yields(wide)["signal_region"]["ttbar"]["nominal"]),
                           np.asarray(ana.yields(p)["signal_region"]["ttbar"]["nominal"]))


@pytest.mark.parametrize(("bandwidth", "bounds", "fragment"), [
    ("nope", [0.02, 0.5], "regions.signal_region.bandwidth: 'nope' is not a parameter"),
    ("sr_bandwidth", [0.0, 0.5], "regions.signal_region.bandwidth: parameter 'sr_bandwidth' "
                                 "has bounds [0.0, 0.5]; a bandwidth needs a lower bound above 0"),
])
def test_bad_bandwidth_parameter_is_a_config_error(bandwidth, bounds, fragment):
    data = mlp_config()
    data["parameters"]["sr_bandwidth"] = {"value": 0.1, "bounds": bounds}
    data["regions"]["signal_region"]["bandwidth"] = bandwidth
    with pytest.raises(ConfigError) as err:
        load_dict(data, source="bw.yaml")
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.long  # 20 s: a Dask cluster (.ci/run runs it)
def test_dask_agrees(held):
    pytest.importorskip("distributed")
    ana = Analysis(load_dict(mlp_config(executor={"kind": "dask", "workers": 1},
                                        chunk_size=1_500)), ROOT / "configs", progress=False)
    try:
        p = ana.initial_params()
        np.testing.assert_allclose(np.asarray(p["nn_score"]["shift"]),
                                   np.asarray(held.initial_params()["nn_score"]["shift"]),
                                   rtol=1e-12)
        u = ana.to_unit(p)
        (ld, gd), (lh, gh) = ana.loss_and_grad(u, p), held.loss_and_grad(u, held.initial_params())
        assert float(ld) == pytest.approx(float(lh), rel=1e-9)
        np.testing.assert_allclose(np.asarray(gd), np.asarray(gh), rtol=1e-7,
                                   atol=1e-9 * np.abs(np.asarray(gh)).max())
        assert ana.hard_objective(p) == pytest.approx(held.hard_objective(p), rel=1e-10)
    finally:
        ana.close()
