"""Systematic variations computed from the nominal events go through the soft selection again."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import ROOT, default_config_dict

from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.exceptions import ConfigError


def with_variations(factor=1.03):
    data = default_config_dict(3_000)
    data["variations"] = {
        "jes_up": {"scale": {"branch": "Jet_pt", "factor": factor}, "samples": ["ttbar"]},
        "jer_up": {"smear": {"branch": "Jet_pt", "sigma": 0.05}},
        "xsec_up": {"weight": 1.1, "samples": ["wjets"]},
    }
    data["model"]["systematics"].append(
        {"name": "jes", "type": "histosys", "variations": {"ttbar": {"up": "ttbar_jes_up"}}})
    data["model"]["systematics"].append(
        {"name": "jer", "type": "histosys", "variations": {"ttbar": {"up": "ttbar_jer_up"},
                                                          "wjets": {"up": "wjets_jer_up"}}})
    return data


@pytest.fixture(scope="module")
def ana():
    return Analysis(load_dict(with_variations()), ROOT / "configs", progress=False)


def test_variation_samples(ana):
    assert set(ana.samples) == {"ttbar", "wjets", "ttbar_jes_up", "ttbar_jer_up", "wjets_jer_up",
                                "wjets_xsec_up"}
    p = ana.initial_params()
    y = ana.yields(p)["signal_region"]
    floor = 1.0
    np.testing.assert_allclose(y["wjets_xsec_up"]["nominal"] - floor,
                               1.1 * (y["wjets"]["nominal"] - floor), rtol=1e-12, atol=1e-9)
    jes, nom = y["ttbar_jes_up"]["nominal"], y["ttbar"]["nominal"]
    assert float(jes.sum()) > float(nom.sum())  # harder jets pass the pT cut more often
    assert np.argmax(jes) >= np.argmax(nom)  # and H_T moves up
    jer = ana.samples["ttbar_jer_up"].lowered.buffers["collections"]["jets"]["fields"]["pt"]
    again = Analysis(load_dict(with_variations()), ROOT / "configs", progress=False)
    np.testing.assert_array_equal(
        jer, again.samples["ttbar_jer_up"].lowered.buffers["collections"]["jets"]["fields"]["pt"])


@pytest.mark.long  # 25 s: finite differences (.ci/run runs it)
def test_objective_with_histosys_is_differentiable(ana):
    p = ana.initial_params()
    loss, grad = ana.loss_and_grad(ana.to_unit(p), p)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    names = [n for n in ana.model.par_names]
    assert "jes" in names and "jer" in names
    sens = ana.sensitivity(p)
    assert "signal_region/ttbar_jes_up" in sens["jet_pt_min"]
    assert sum(sens["jet_pt_min"].values()) == pytest.approx(
        float(jax.grad(lambda t: ana.objective(dict(p, jet_pt_min=t)))(p["jet_pt_min"])), rel=1e-6)


def test_unit_scale_is_nominal():
    ana1 = Analysis(load_dict(with_variations(factor=1.0)), ROOT / "configs", progress=False)
    y = ana1.yields(ana1.initial_params())["signal_region"]
    np.testing.assert_allclose(y["ttbar_jes_up"]["nominal"], y["ttbar"]["nominal"], rtol=1e-12)


def test_bad_variation_reference():
    data = with_variations()
    data["model"]["systematics"][-1]["variations"]["ttbar"]["up"] = "ttbar_jex_up"
    with pytest.raises(ConfigError, match=r"variations\.ttbar\.up: 'ttbar_jex_up' is neither"):
        load_dict(data)
    data = with_variations()
    data["variations"]["jes_up"] = {"scale": {"branch": "Jet_pt"}}
    with pytest.raises(ConfigError, match=r"variations\.jes_up.*scale needs"):
        load_dict(data)


@pytest.mark.long  # 20 s (.ci/run runs it)
def test_reweight_variation_and_nth_observable():
    data = default_config_dict(1_000)
    data["observables"]["jet0_pt"] = {"kind": "nth", "collection": "jets", "field": "pt",
                                      "options": {"index": 0}}
    data["observables"]["jet2_pt"] = {"kind": "nth", "collection": "jets", "field": "pt",
                                      "options": {"index": 2}}
    data["variations"] = {"btag_var_0_up": {"reweight": {"observable": "jet0_pt",
                                                         "slope": 0.0015}}}
    data["model"]["systematics"].append(
        {"name": "btag_0", "type": "histosys",
         "variations": {"ttbar": {"up": "ttbar_btag_var_0_up"}}})
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    assert ana.samples["ttbar_btag_var_0_up"].lowered is ana.samples["ttbar"].lowered
    p = ana.initial_params()
    events = ana.region_events(p, hard=True)
    x0, w0 = events["ttbar"]["signal_region"]
    _, w1 = events["ttbar_btag_var_0_up"]["signal_region"]
    # the hard twin: the leading selected jet's pT, as a boolean-mask analysis would take it
    jets = ana.samples["ttbar"].lowered.jagged["jets"]
    import awkward as ak

    sel = jets[(jets.pt > float(p["jet_pt_min"])) & (abs(jets.eta) < 2.4)]
    lead = ak.to_numpy(ak.fill_none(ak.firsts(sel.pt), 0.0))
    third = ak.to_numpy(ak.fill_none(ak.firsts(sel.pt[:, 2:]), 0.0))
    np.testing.assert_allclose(np.asarray(w1), np.asarray(w0) * (1 + 0.0015 * lead), rtol=1e-12)
    from diffana import observe, ragged, select

    lowered = ana.samples["ttbar"].lowered
    ops = ragged.CompiledOps(ragged.to_device(lowered.buffers), lowered.n_events)
    weights = select.object_weights(ana.cfg, ana.plan, ops, p, hard=True)
    obs = observe.evaluate(ana.cfg, ana.plan, ops, weights)
    np.testing.assert_allclose(obs["jet2_pt"], third, rtol=1e-12)
    loss, grad = ana.loss_and_grad(ana.to_unit(p), p)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_preselection_keeps_the_hard_result():
    data = default_config_dict(3_000)
    full = Analysis(load_dict(data), ROOT / "configs", progress=False)
    data["preselect"] = True
    pre = Analysis(load_dict(data), ROOT / "configs", progress=False)
    assert pre.samples["wjets"].n_events < 0.6 * full.samples["wjets"].n_events
    for params in (full.initial_params(), dict(full.initial_params(), btag_threshold=0.8)):
        hf, hp = full.hard_yields(params), pre.hard_yields(params)
        ff, fp = full.yields(params), pre.yields(params)
        for s in ("ttbar", "wjets"):
            np.testing.assert_allclose(hp["signal_region"][s]["nominal"],
                                       hf["signal_region"][s]["nominal"], rtol=1e-12)
            # dropped events had soft weight < sigmoid(-5) from the >= 4 jets requirement
            np.testing.assert_allclose(fp["signal_region"][s]["nominal"],
                                       ff["signal_region"][s]["nominal"], rtol=0.02, atol=2.0)
