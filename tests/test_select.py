"""Soft selection: gradients, hard limit, and the hard twin on real NanoAOD files."""

from __future__ import annotations

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import uproot
from conftest import DATA
from jax.test_util import check_grads

from diffana import soft
from diffana.analysis import Analysis
from diffana.config import load_dict


def test_soft_ops_gradients():
    x = jnp.linspace(20.0, 60.0, 9)
    check_grads(lambda c: soft.soft_above(x, c, 3.0), (jnp.asarray(35.0),), order=2)
    check_grads(lambda c: soft.soft_below(x, c, 3.0), (jnp.asarray(35.0),), order=2)
    counts = jnp.array([0.2, 1.4, 3.7, 4.1])
    check_grads(lambda t: soft.at_least(counts, 4, t), (jnp.asarray(0.5),), order=1)
    check_grads(lambda c: soft.exactly(c, 1, 0.3), (counts,), order=1)
    w = jnp.array([0.1, 0.7, 0.4])
    check_grads(lambda w: soft.soft_or([w, w**2]), (w,), order=1)
    check_grads(lambda w: soft.soft_and([w, 1 - w]), (w,), order=1)


@pytest.mark.parametrize("t", [1e-3, 1e-6])
def test_soft_tends_to_hard(t):
    x = jnp.array([29.0, 29.9, 30.1, 35.0])
    smooth = soft.soft_above(x, 30.0, t)
    hard = soft.soft_above(x, 30.0, t, hard=True)
    np.testing.assert_allclose(smooth, hard, atol=1e-12)
    np.testing.assert_array_equal(hard, [0.0, 0.0, 1.0, 1.0])
    counts = jnp.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(soft.exactly(counts, 1, t), [0, 1, 0, 0], atol=1e-12)
    np.testing.assert_array_equal(soft.exactly(counts, 1, t, hard=True), [0, 1, 0, 0])
    np.testing.assert_array_equal(soft.at_least(counts, 2, t, hard=True), [0, 0, 1, 1])


def real_config(path, btag: str) -> dict:
    """Loose cuts that some events of the 200-event real files pass."""
    return {
        "name": "real",
        "luminosity": 1000.0,
        "samples": {
            "sample": {"files": [str(path)], "cross_section": 100.0, "normalisation": "genweight"},
            "other": {"files": [str(path)], "cross_section": 50.0},
        },
        "parameters": {
            "jet_pt_min": {"value": 25.0, "bounds": [15.0, 60.0], "temperature": 1.0},
            "btag_min": {"value": 0.3, "bounds": [0.05, 0.9], "temperature": 0.02},
            "electron_pt_min": {"value": 15.0, "bounds": [10.0, 60.0], "temperature": 1.0},
            "met_min": {"value": 10.0, "bounds": [0.0, 60.0], "temperature": 2.0},
        },
        "objects": {
            "jets": {"source": "Jet", "fields": {"btag": btag},
                     "cuts": [{"field": "pt", "above": "jet_pt_min"},
                              {"field": "eta", "abs": True, "below": 2.4},
                              {"field": "jetId", "bits_set": 2}]},
            "bjets": {"source": "jets", "cuts": [{"field": "btag", "above": "btag_min"}]},
            "electrons": {"source": "Electron",
                          "cuts": [{"field": "pt", "above": "electron_pt_min"},
                                   {"field": "eta", "abs": True, "below": 2.5}]},
            "muons": {"source": "Muon", "cuts": [{"field": "pt", "above": 10.0}]},
        },
        "observables": {
            "ht": {"kind": "sum", "collection": "jets", "field": "pt"},
            "n_jets": {"kind": "count", "collection": "jets"},
            "met": {"kind": "branch", "options": {"branch": "MET_pt"}},
            "muon_pt": {"kind": "leading", "collection": "muons", "field": "pt"},
        },
        "selection": [
            {"count": "jets", "at_least": 2},
            {"any": [{"count": "electrons", "at_least": 1}, {"count": "muons", "at_least": 1}]},
            {"observable": "met", "above": "met_min"},
        ],
        "regions": {
            "one_b": {"selection": [{"count": "bjets", "exactly": 1}], "observable": "ht",
                      "binning": {"bins": 10, "low": 0.0, "high": 1000.0}, "bandwidth": 30.0},
            "two_b": {"selection": [{"count": "bjets", "at_least": 2}], "observable": "muon_pt",
                      "binning": {"edges": [0.0, 50.0, 100.0, 200.0]}, "bandwidth": 10.0},
        },
        "model": {"signal": ["sample"]},
    }


def boolean_mask_analysis(path, btag: str, p: dict):
    """The same selection written plainly with Awkward boolean masks."""
    ev = uproot.open(path)["Events"].arrays()
    jets = (ev.Jet_pt > p["jet_pt_min"]) & (abs(ev.Jet_eta) < 2.4) & ((ev.Jet_jetId & 2) == 2)
    bjets = jets & (ev[btag] > p["btag_min"])
    electrons = (ev.Electron_pt > p["electron_pt_min"]) & (abs(ev.Electron_eta) < 2.5)
    muons = ev.Muon_pt > 10.0
    n_b = ak.sum(bjets, axis=1)
    base = ((ak.sum(jets, axis=1) >= 2)
            & ((ak.sum(electrons, axis=1) >= 1) | (ak.sum(muons, axis=1) >= 1))
            & (ev.MET_pt > p["met_min"]))
    one_b, two_b = base & (n_b == 1), base & (n_b >= 2)
    ht = ak.sum(ev.Jet_pt[jets], axis=1)
    muon_pt = ak.fill_none(ak.firsts(ev.Muon_pt[muons]), 0.0)
    return {"one_b": (ak.to_numpy(one_b), ak.to_numpy(ht)),
            "two_b": (ak.to_numpy(two_b), ak.to_numpy(muon_pt))}


@pytest.mark.parametrize("filename,btag,engine", [
    ("cms2015_wjets_nanoaod_200.root", "Jet_btagCSVV2", "compiled"),
    ("nano_tt_v12.root", "Jet_btagDeepFlavB", "compiled"),
    ("nano_tt_v12.root", "Jet_btagDeepFlavB", "awkward"),
    # the engines agree everywhere (test_engines); the second awkward file adds no coverage
    pytest.param("cms2015_wjets_nanoaod_200.root", "Jet_btagCSVV2", "awkward",
                 marks=pytest.mark.slow),
])
def test_hard_limit_equals_boolean_masks(filename, btag, engine):
    path = DATA / filename
    ana = Analysis(load_dict(real_config(path, btag)), engine=engine, progress=False)
    for shift in (0.0, 7.0):
        params = {k: v + shift * (k != "btag_min") for k, v in ana.initial_params().items()}
        events = ana.region_events(params, hard=True)
        expected = boolean_mask_analysis(path, btag, {k: float(v) for k, v in params.items()})
        norm = ana.samples["other"].norm
        for region, (mask, obs) in expected.items():
            x, w = (np.asarray(a) for a in events["other"][region])
            assert mask.sum() > 0, f"{filename}: no event passes {region}; loosen the cuts"
            np.testing.assert_array_equal(w / norm, mask.astype(float))
            np.testing.assert_allclose(x[mask], obs[mask], rtol=1e-12)


def test_soft_selection_gradients_real_file():
    path = DATA / "nano_tt_v12.root"
    cfg = real_config(path, "Jet_btagDeepFlavB")
    ana = Analysis(load_dict(cfg), engine="compiled", progress=False)
    p0 = ana.initial_params()

    def region_yield(theta):
        p = dict(p0)
        p.update(theta)
        x, w = ana.region_events(p)["sample"]["one_b"]
        return jnp.sum(w * x) / 1e3

    theta = {k: p0[k] for k in ("jet_pt_min", "btag_min", "electron_pt_min", "met_min")}
    check_grads(region_yield, (theta,), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-5)


def test_genweight_normalisation():
    path = DATA / "cms2015_wjets_nanoaod_200.root"
    ana = Analysis(load_dict(real_config(path, "Jet_btagCSVV2")), progress=False)
    gw = uproot.open(path)["Events"]["genWeight"].array(library="np").astype(np.float64)
    expected = 100.0 * 1000.0 * gw / gw.sum()
    np.testing.assert_allclose(ana.samples["sample"].lowered.weight, expected, rtol=1e-12)
    assert (gw < 0).any()
    np.testing.assert_allclose(ana.samples["other"].lowered.weight, 50.0 * 1000.0 / 200)


@pytest.mark.parametrize("run", ["known", None])  # element-wise product; associative scan
def test_nth_selected_hard_and_soft(run):
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 7, 40)
    max_run = int(counts.max()) if run else None
    assert max_run is None or max_run <= soft.SHORT_RUN
    starts = np.zeros(counts.sum(), dtype=bool)
    starts[np.concatenate([[0], np.cumsum(counts)[:-1]])[counts > 0]] = True
    mask = rng.random(counts.sum()) < 0.6
    # compiled whole: op by op, the scan's many small operations compile one by one (~8 s)
    nth_selected = jax.jit(soft.nth_selected, static_argnums=(2, 3))
    p = np.asarray(nth_selected(jnp.asarray(mask, dtype=float), jnp.asarray(starts), 4, max_run))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for e in range(len(counts)):
        chosen = np.flatnonzero(mask[offsets[e]:offsets[e + 1]]) + offsets[e]
        for i in range(4):
            expected = np.zeros(counts.sum())
            if i < len(chosen):
                expected[chosen[i]] = 1.0
            np.testing.assert_array_equal(p[offsets[e]:offsets[e + 1], i],
                                          expected[offsets[e]:offsets[e + 1]])
    # soft: for each event, Σ_c p[c, i] = P(at least i+1 selected); check against brute force
    w = jnp.asarray(rng.uniform(0.05, 0.95, 5))
    p = nth_selected(w, jnp.array([1, 0, 0, 0, 0]), 3, 5 if run else None)
    import itertools

    brute = np.zeros((5, 3))
    for bits in itertools.product([0, 1], repeat=5):
        prob = np.prod([float(w[k]) if b else 1 - float(w[k]) for k, b in enumerate(bits)])
        for rank, c in enumerate(np.flatnonzero(bits)[:3]):
            brute[c, rank] += prob
    np.testing.assert_allclose(p, brute, rtol=1e-12)
    check_grads(jax.jit(lambda w: soft.nth_selected(w, jnp.array([1, 0, 0, 1, 0]), 3,
                                                    3 if run else None)),
                (w,), order=1,
                modes=("fwd", "rev"))


def _ragged_layout(rng, n_events: int, most: int, padding: int):
    """Flat objects of ``n_events`` events (0..most each) and ``padding`` padding objects
    (owned by event ``n_events``, each starting an event of its own), as lowering lays them."""
    counts = rng.integers(0, most + 1, n_events)
    counts[rng.integers(n_events)] = most
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    owner = np.concatenate([np.repeat(np.arange(n_events), counts), np.full(padding, n_events)])
    starts = np.zeros(n + padding, dtype=bool)
    starts[offsets[:-1][counts > 0]] = True
    starts[n:] = True
    first = np.minimum(offsets[:-1], max(n + padding - 1, 0))
    return counts, (jnp.asarray(owner), jnp.asarray(first), jnp.asarray(counts)), starts


@pytest.mark.parametrize("seed", [0])
def test_nth_selected_dense_equals_the_elementwise_product(seed):
    """The event-by-event table (the compiled engine's) equals the element-wise product on
    every real object — values, reverse mode (its own gathers' derivative) and forward mode
    — and the hard limit is the i-th selected object."""
    import jax

    rng = np.random.default_rng(seed)
    counts, segments, starts = _ragged_layout(rng, 120, 9, padding=7)
    n_real = int(counts.sum())
    w = jnp.asarray(rng.uniform(0.01, 0.99, n_real + 7))
    x = jnp.asarray(rng.normal(size=(n_real + 7, 4)) * (np.arange(n_real + 7) < n_real)[:, None])

    @jax.jit
    def old(w):
        return jnp.sum(soft.nth_selected(w, jnp.asarray(starts), 4, 9) * x)

    @jax.jit
    def new(w):
        return jnp.sum(soft.nth_selected_dense(w, segments, 4, 9) * x)

    @jax.jit
    def new_reverse(w):  # traced with the table's own gather derivatives
        with soft.reverse_mode():
            return jnp.sum(soft.nth_selected_dense(w, segments, 4, 9) * x)

    def table(w):  # the real objects' p[c, i]; padding objects are dropped by every sum
        return np.asarray(jax.jit(soft.nth_selected_dense, static_argnums=(2, 3))(
            w, segments, 4, 9))[:n_real]

    def elementwise(w):
        return np.asarray(jax.jit(soft.nth_selected, static_argnums=(2, 3))(
            w, jnp.asarray(starts), 4, 9))[:n_real]

    np.testing.assert_allclose(table(w), elementwise(w), rtol=1e-14, atol=1e-16)
    expected = np.asarray(jax.grad(old)(w))
    for f in (new_reverse, new):
        np.testing.assert_allclose(np.asarray(jax.grad(f)(w)), expected, rtol=1e-13, atol=1e-15)
    t = jnp.asarray(rng.normal(size=w.shape))
    np.testing.assert_allclose(float(jax.jvp(new, (w,), (t,))[1]),
                               float(jax.jvp(old, (w,), (t,))[1]), rtol=1e-12)
    check_grads(new_reverse, (w,), order=1, modes=("rev",))
    check_grads(new, (w,), order=1, modes=("fwd", "rev"))
    mask = jnp.asarray(rng.random(n_real + 7) < 0.5, dtype=float)
    np.testing.assert_array_equal(table(mask), elementwise(mask))
