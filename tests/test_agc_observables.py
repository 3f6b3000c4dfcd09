"""AGC m_bjj: the hard twin equals the AGC definition on real NanoAOD; soft is differentiable."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import jax.numpy as jnp
import numpy as np
import pytest
import uproot
from conftest import DATA, ROOT
from jax.test_util import check_grads

from diffana.analysis import Analysis
from diffana.config import load_dict

OBSERVABLES = ROOT / "analyses" / "agc_ttbar" / "observables.py"


def config(path: Path, btag: str) -> dict:
    return {
        "imports": [str(OBSERVABLES)],
        "luminosity": 1.0,
        "samples": {"s": {"files": [str(path)], "cross_section": 1.0},
                    "b": {"files": [str(path)], "cross_section": 2.0}},
        "parameters": {
            "jet_pt_min": {"value": 25.0, "bounds": [15.0, 60.0], "temperature": 1.0},
            "btag_threshold": {"value": 0.4, "bounds": [0.05, 0.9], "temperature": 0.02},
        },
        "objects": {
            "jets": {"source": "Jet", "fields": {"btag": btag},
                     "cuts": [{"field": "pt", "above": "jet_pt_min"},
                              {"field": "eta", "abs": True, "below": 2.4}]},
            "bjets": {"source": "jets", "cuts": [{"field": "btag", "above": "btag_threshold"}]},
        },
        "observables": {"m_bjj": {"kind": "trijet_mass", "collection": "jets",
                                  "options": {"btag_collection": "bjets"}}},
        "selection": [{"count": "jets", "at_least": 3}, {"count": "bjets", "at_least": 1}],
        "regions": {"SR": {"observable": "m_bjj", "binning": {"bins": 10, "low": 0, "high": 1000},
                           "bandwidth": 20.0}},
        "model": {"signal": ["s"]},
    }


def best_trijet_mass(jets: ak.Array, btag_threshold: float) -> ak.Array:
    """The AGC m_bjj of already selected jets (fields pt, eta, phi, mass, btag); 0 if none."""
    tri = ak.combinations(jets, 3, fields=["a", "b", "c"])

    def comp(j):
        return (j.pt * np.cos(j.phi), j.pt * np.sin(j.phi), j.pt * np.sinh(j.eta),
                np.sqrt((j.pt * np.cosh(j.eta)) ** 2 + j.mass**2))

    px, py, pz, e = (sum(x) for x in zip(comp(tri.a), comp(tri.b), comp(tri.c), strict=True))
    pt = np.sqrt(px**2 + py**2)
    mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))
    has_b = np.maximum(np.maximum(tri.a.btag, tri.b.btag), tri.c.btag) > btag_threshold
    pt, mass = pt[has_b], mass[has_b]
    best = ak.argmax(pt, axis=1, keepdims=True)
    return ak.fill_none(ak.firsts(mass[best]), 0.0)


def read_jets(path: Path, btag: str) -> ak.Array:
    ev = uproot.open(path)["Events"].arrays()
    f64 = lambda a: ak.values_astype(a, np.float64)  # noqa: E731
    return ak.zip({"pt": f64(ev.Jet_pt), "eta": f64(ev.Jet_eta), "phi": f64(ev.Jet_phi),
                   "mass": f64(ev.Jet_mass), "btag": f64(ev[btag]), "jetId": ev.Jet_jetId})


def agc_m_bjj(path: Path, btag: str, jet_pt_min: float, btag_threshold: float):
    """The AGC definition with plain Awkward boolean masks."""
    jets = read_jets(path, btag)
    jets = jets[(jets.pt > jet_pt_min) & (abs(jets.eta) < 2.4)]
    selected = (ak.num(jets) >= 3) & (ak.sum(jets.btag > btag_threshold, axis=1) >= 1)
    return ak.to_numpy(selected), ak.to_numpy(best_trijet_mass(jets, btag_threshold))


@pytest.mark.parametrize("filename,btag,engine", [
    ("nano_tt_v12.root", "Jet_btagDeepFlavB", "compiled"),
    pytest.param("nano_tt_v12.root", "Jet_btagDeepFlavB", "awkward", marks=pytest.mark.slow),
    ("cms2015_wjets_nanoaod_200.root", "Jet_btagCSVV2", "compiled"),
    pytest.param("cms2015_wjets_nanoaod_200.root", "Jet_btagCSVV2", "awkward",
                 marks=pytest.mark.slow),
])
def test_hard_m_bjj_equals_agc_definition(filename, btag, engine):
    path = DATA / filename
    ana = Analysis(load_dict(config(path, btag)), engine=engine, progress=False)
    for jet_pt_min, btag_threshold in ((25.0, 0.4), (40.0, 0.2)):
        params = dict(ana.initial_params(), jet_pt_min=jnp.asarray(jet_pt_min),
                      btag_threshold=jnp.asarray(btag_threshold))
        x, w = (np.asarray(a) for a in ana.region_events(params, hard=True)["s"]["SR"])
        selected, expected = agc_m_bjj(path, btag, jet_pt_min, btag_threshold)
        assert selected.sum() >= 3
        np.testing.assert_array_equal(w > 0, selected)
        np.testing.assert_allclose(x[selected], expected[selected], rtol=1e-9)


@pytest.mark.slow  # 40 s; the AGC objective's finite-difference check (test_agc_analysis)
def test_soft_m_bjj_gradients_and_engines():  # goes through soft m_bjj in the default run
    path = DATA / "nano_tt_v12.root"
    cfg = load_dict(config(path, "Jet_btagDeepFlavB"))
    compiled = Analysis(cfg, engine="compiled", progress=False)
    awkward = Analysis(cfg, engine="awkward", progress=False)
    p0 = compiled.initial_params()

    def mean_mass(ana):
        def f(theta):
            x, w = ana.region_events(dict(p0, **theta))["s"]["SR"]
            return jnp.sum(w * x) / jnp.sum(w)
        return f

    theta = {"jet_pt_min": p0["jet_pt_min"], "btag_threshold": p0["btag_threshold"]}
    check_grads(mean_mass(compiled), (theta,), order=1, modes=("fwd", "rev"), eps=1e-4,
                atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(mean_mass(compiled)(theta), mean_mass(awkward)(theta), rtol=1e-10)


def test_pruned_candidates_give_the_same_hard_m_bjj():
    """Dropping trijets that an earlier one beats at every cut leaves the hard m_bjj alone."""
    path = DATA / "nano_tt_v12.root"
    data = config(path, "Jet_btagDeepFlavB")
    full = Analysis(load_dict(data), progress=False)
    data["observables"]["m_bjj"]["options"]["prune"] = True
    pruned = Analysis(load_dict(data), progress=False)
    n_full = len(full.samples["s"].lowered.buffers["prepared"]["m_bjj"]["mass"])
    n_pruned = len(pruned.samples["s"].lowered.buffers["prepared"]["m_bjj"]["mass"])
    assert n_pruned < 0.5 * n_full
    for jet_pt_min, btag_threshold in ((15.0, 0.05), (25.0, 0.4), (60.0, 0.9)):
        params = dict(full.initial_params(), jet_pt_min=jnp.asarray(jet_pt_min),
                      btag_threshold=jnp.asarray(btag_threshold))
        a = full.region_events(params, hard=True)["s"]["SR"]
        b = pruned.region_events(params, hard=True)["s"]["SR"]
        np.testing.assert_array_equal(np.asarray(b[1]), np.asarray(a[1]))
        np.testing.assert_array_equal(np.asarray(b[0]), np.asarray(a[0]))
