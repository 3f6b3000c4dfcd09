"""The ``binary_cross_entropy`` objective: a classifier's loss through the soft selection,
summed over events like the yields (every executor), against a NumPy computation over the
events, its gradients (finite differences), the hard evaluation and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, fused_and_reverse, write_config
from test_mlp import mlp_config

from diffana import classifier
from diffana.analysis import Analysis, prepare
from diffana.config import load_dict
from diffana.exceptions import ConfigError

BCE = {"kind": "binary_cross_entropy", "signal": ["ttbar"], "observable": "nn_score"}


def bce_config(**objective) -> dict:
    data = mlp_config()
    data["objective"] = {**BCE, **objective}
    return data


@pytest.fixture(scope="module")
def held():
    return Analysis(load_dict(bce_config()), ROOT / "configs", progress=False)


def numpy_bce(events: dict, region: str, signal: list[str], balanced: bool = False) -> float:
    """The cross-entropy of each nominal sample's per-event score and weight, in NumPy."""
    sums = {}
    for sample in ("ttbar", "wjets"):
        x, w = (np.asarray(a) for a in events[sample][region])
        s = np.clip(x, classifier.EPS, 1 - classifier.EPS)
        w = w[0] if w.ndim > 1 else w
        sums[sample] = (np.sum(w * -np.log(s)), np.sum(w * -np.log1p(-s)), np.sum(w))
    sig = np.sum([v for k, v in sums.items() if k in signal], axis=0)
    bkg = np.sum([v for k, v in sums.items() if k not in signal], axis=0)
    if balanced:
        return 0.5 * (sig[0] / sig[2] + bkg[1] / bkg[2])
    return (sig[0] + bkg[1]) / (sig[2] + bkg[2])


def test_soft_objective_equals_numpy_over_the_training_events(held):
    """The region has no selection of its own: its weights are the top-level selection's;
    a computed variation (a set of its own) is no label of the classifier."""
    p = held.initial_params()
    expected = numpy_bce(held.region_events(p), "signal_region", ["ttbar"])
    assert float(held.objective(p)) == pytest.approx(expected, rel=1e-12)
    assert not held.maximise and 0.1 < expected < 2.0
    data = bce_config(balanced=True)
    data["variations"] = {"jes_up": {"scale": {"branch": "Jet_pt", "factor": 1.05}}}
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    p = ana.initial_params()
    expected = numpy_bce(ana.region_events(p), "signal_region", ["ttbar"], balanced=True)
    assert float(ana.objective(p)) == pytest.approx(expected, rel=1e-12)


def test_region_restricts_the_events():
    data = bce_config(region="tight")
    data["regions"]["tight"] = {**data["regions"]["signal_region"], "selection": [
        {"observable": "ht", "above": 400.0, "temperature": 20.0}]}
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    p = ana.initial_params()
    events = ana.region_events(p)
    expected = numpy_bce(events, "tight", ["ttbar"])
    assert float(ana.objective(p)) == pytest.approx(expected, rel=1e-12)
    assert abs(expected - numpy_bce(events, "signal_region", ["ttbar"])) > 1e-3


def test_gradient_matches_finite_differences(held):
    """∂BCE/∂u in float64: the cuts (through the soft selection and the network's inputs)
    and a sample of the network's weights."""
    p = held.initial_params()
    u0 = np.asarray(held.to_unit(p))
    _, grad = held.loss_and_grad(u0, p)
    grad = np.asarray(grad)
    rng = np.random.default_rng(1)
    n_cuts = len(held.trainable)
    checked = 0
    for i in [*range(n_cuts), *(n_cuts + rng.choice(held.space.size - n_cuts, 6, replace=False))]:
        h = 1e-6
        up, down = u0.copy(), u0.copy()
        up[i] += h
        down[i] -= h
        fd = (float(held.loss_and_grad(up, p)[0]) - float(held.loss_and_grad(down, p)[0])) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-9), held.space.unit_names[i]
        checked += abs(fd) > 1e-4
    assert checked >= 5


def test_every_executor_agrees(held):
    p = held.initial_params()
    u = held.to_unit(p)
    fused, reverse = fused_and_reverse(held, u, p)
    others = [reverse]
    streamed = Analysis(load_dict({**bce_config(), "streaming": True, "chunk_size": 1_000,
                                   "lowered_cache": False}), ROOT / "configs", progress=False)
    others.append(streamed.loss_and_grad(streamed.to_unit(streamed.initial_params()),
                                         streamed.initial_params()))
    hard = [streamed.hard_objective(streamed.initial_params())]
    try:
        import distributed  # noqa: F401
        dask = Analysis(load_dict({**bce_config(), "chunk_size": 1_500,
                                   "executor": {"kind": "dask", "workers": 1}}),
                        ROOT / "configs", progress=False)
    except ImportError:
        dask = None
    if dask is not None:
        try:
            others.append(dask.loss_and_grad(dask.to_unit(dask.initial_params()),
                                             dask.initial_params()))
            hard.append(dask.hard_objective(dask.initial_params()))
        finally:
            dask.close()
    scale = np.abs(np.asarray(fused[1])).max()
    for loss, grad in others:
        assert float(loss) == pytest.approx(float(fused[0]), rel=1e-9)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(fused[1]), rtol=1e-9,
                                   atol=1e-9 * scale)
    for value in hard:
        assert value == pytest.approx(held.hard_objective(p), rel=1e-9)


def test_hard_objective_is_the_hard_bce_of_the_test_events(held):
    p = held.initial_params()
    for part in ("test", "train"):
        events: dict = {}
        for g, regions in held.executor.event_parts(p, True, part=part):
            events[["ttbar", "wjets"][g]] = regions
        expected = numpy_bce(events, "signal_region", ["ttbar"])
        assert held.hard_objective(p, part=part) == pytest.approx(expected, rel=1e-12)
    assert held.hard_objective(p, part="test") != held.hard_objective(p, part="train")


def test_a_run_writes_results_without_a_sensitivity(tmp_path):
    from diffana.run import run

    res = run(write_config(tmp_path / "bce.yaml", bce_config()), steps=2, out=tmp_path / "run",
              progress=False)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["objective"] == "binary_cross_entropy" and written["sensitivity"] == {}
    assert res["objective_final"] < res["objective_initial"]
    assert np.isfinite(written["hard"]["objective_final"])
    assert np.isfinite(written["hard_train"]["objective_final"])
    assert (tmp_path / "run" / "parameters.npz").is_file()


@pytest.mark.parametrize(("objective", "fragment"), [
    ({"observable": "nope"}, "objective.observable: 'nope' is not an observable"),
    ({"signal": ["zz"]}, "objective.signal[0]: 'zz' is not a nominal sample"),
    ({"signal": ["ttbar", "wjets"]}, "objective.signal: ['ttbar', 'wjets'] leaves no nominal "
                                     "sample labelled 0"),
    ({"region": "nope"}, "objective.region: 'nope' is not a region"),
    ({"observable": None}, "objective.observable: kind binary_cross_entropy needs observable"),
    ({"signal": []}, "objective.signal: kind binary_cross_entropy needs signal"),
])
def test_bad_classifier_objective_is_a_one_line_config_error(objective, fragment):
    data = bce_config(**objective)
    with pytest.raises(ConfigError) as err:
        load_dict(data, source="bce.yaml")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_awkward_engine_is_refused():
    with pytest.raises(ConfigError, match="binary_cross_entropy needs engine: compiled"):
        prepare(load_dict(bce_config()), engine="awkward")
