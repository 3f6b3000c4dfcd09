"""Reading: TTree and RNTuple, chunked, NanoAOD naming."""

from __future__ import annotations

import awkward as ak
import numpy as np

from diffana.io import num_entries, read_branches, write_events


def events(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3, n)
    jets = ak.unflatten(ak.zip({"pt": rng.exponential(50, counts.sum()),
                                "eta": rng.normal(0, 1.5, counts.sum())}), counts)
    return {"Jet": jets, "MET_pt": rng.exponential(40, n)}


def test_ttree_round_trip_chunked(tmp_path):
    ev = events()
    path = write_events(tmp_path / "a.root", ev)
    assert num_entries([path], "Events") == 1000
    seen = []
    got = read_branches([path, path], "Events", ["Jet_pt", "MET_pt", "nJet"], step_size=300,
                        progress=seen.append)
    assert len(got) == 2000 and seen == [300, 300, 300, 100] * 2
    assert ak.all(got["Jet_pt"][:1000] == ev["Jet"].pt)
    np.testing.assert_array_equal(got["nJet"][:1000], ak.num(ev["Jet"]))


def test_rntuple_round_trip(tmp_path):
    ev = events(500, seed=1)
    path = write_events(tmp_path / "b.root", ev, rntuple=True)
    got = read_branches([path], "Events", ["Jet_pt", "Jet_eta", "MET_pt"], step_size=200)
    assert len(got) == 500
    assert ak.all(got["Jet_eta"] == ev["Jet"].eta)
    np.testing.assert_array_equal(got["MET_pt"], ev["MET_pt"])


def test_rntuple_through_the_analysis(tmp_path):
    """An RNTuple file goes through the same stages as a TTree file, with the same result."""
    from diffana.analysis import Analysis
    from diffana.config import load_dict

    ev = events(800, seed=2)
    ev["Muon"] = ak.unflatten(ak.zip({"pt": np.full(800, 40.0)}), np.ones(800, dtype=int))
    for kind in ("ttree", "rntuple"):
        write_events(tmp_path / f"{kind}.root", ev, rntuple=kind == "rntuple")
    results = []
    for kind in ("ttree", "rntuple"):
        cfg = load_dict({
            "samples": {"s": {"files": [str(tmp_path / f"{kind}.root")], "cross_section": 1.0},
                        "b": {"files": [str(tmp_path / f"{kind}.root")], "cross_section": 2.0}},
            "parameters": {"pt_min": {"value": 30.0, "bounds": [0.0, 100.0]}},
            "objects": {"jets": {"source": "Jet", "cuts": [{"field": "pt", "above": "pt_min"}]}},
            "observables": {"ht": {"kind": "sum", "collection": "jets", "field": "pt"}},
            "regions": {"SR": {"observable": "ht", "binning": {"bins": 5, "low": 0, "high": 500},
                               "bandwidth": 20.0}},
            "model": {"signal": ["s"]},
        })
        ana = Analysis(cfg, progress=False)
        results.append(np.asarray(ana.yields(ana.initial_params())["SR"]["s"]["nominal"]))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)
