"""Reading: TTree and RNTuple, chunked, NanoAOD naming."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from diffana.exceptions import DataError
from diffana.io import identity, iterate_branches, read_branches, sum_of_weights, write_events


def events(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3, n)
    jets = ak.unflatten(ak.zip({"pt": rng.exponential(50, counts.sum()),
                                "eta": rng.normal(0, 1.5, counts.sum())}), counts)
    return {"Jet": jets, "MET_pt": rng.exponential(40, n)}


def test_ttree_round_trip_chunked(tmp_path):
    ev = events()
    path = write_events(tmp_path / "a.root", ev)
    assert identity(path, "Events")["entries"] == 1000
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
            "luminosity": 1.0,
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


# --- damaged and empty files ----------------------------------------------------------------


def test_truncated_file_is_named_at_open(tmp_path):
    """A file cut short (an interrupted copy) fails when opened, naming the file and both
    sizes, before uproot reads the cut-off baskets (one line, not uproot's traceback text)."""
    path = write_events(tmp_path / "a.root", events(500))
    raw = path.read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(DataError) as err:
        read_branches([path, cut], "Events", ["Jet_pt"])
    msg = str(err.value)
    assert msg == (f"{cut}: truncated ROOT file: {len(raw) // 2} bytes of the {len(raw)} its "
                   "header records (an interrupted copy or write?)")
    for size in (0, 10):
        cut.write_bytes(raw[:size])
        with pytest.raises(DataError, match=rf"{cut.name}: (cannot be read as a ROOT file \(the "
                                            rf"file is empty|truncated ROOT file)"):
            identity(cut, "Events")


def test_damaged_basket_names_the_branch(tmp_path):
    """A damaged basket fails while reading: the message names the file, the first branch
    that cannot be read and the entries of the chunk."""
    path = write_events(tmp_path / "a.root", events(500))
    branch = uproot.open(path)["Events"]["Jet_eta"]
    seek, size = int(branch.member("fBasketSeek")[0]), int(branch.member("fBasketBytes")[0])
    raw = bytearray(path.read_bytes())
    raw[seek + size // 2:seek + size // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        read_branches([path], "Events", ["Jet_pt", "Jet_eta", "MET_pt"], step_size=200)
    msg = str(err.value)
    assert msg.startswith(f"{path}: branch 'Jet_eta' of 'Events' cannot be read at entries 0-200")
    assert "\n" not in msg


def test_empty_tree_is_skipped(tmp_path):
    """A file whose tree has no entries yields nothing; only files all empty are an error."""
    empty = write_events(tmp_path / "empty.root", events(0))
    full = write_events(tmp_path / "full.root", events(300))
    assert identity(empty, "Events")["entries"] == 0
    assert list(iterate_branches([empty], "Events", ["Jet_pt", "MET_pt"])) == []
    got = read_branches([empty, full, empty], "Events", ["Jet_pt", "MET_pt"])
    assert len(got) == 300
    with pytest.raises(DataError, match=r"empty.root, .*empty.root: no events in 'Events' \(0 "
                                        r"entries in each file\); expected at least one"):
        read_branches([empty, empty], "Events", ["Jet_pt"])


def test_sum_of_weights_skips_nonfinite_and_refuses_zero(tmp_path):
    """NaN/inf weights are left out of Σ genWeight, as their events are (nonfinite: drop;
    with stop reading them is an error); a sum of 0 cannot normalise."""
    ev = events(4)
    ev["genWeight"] = np.array([1.0, np.nan, 2.0, np.inf])
    path = write_events(tmp_path / "w.root", ev)
    assert sum_of_weights([path], "Events") == 3.0
    ev["genWeight"] = np.array([1.0, -1.0, 0.0, 0.0])
    zero = write_events(tmp_path / "zero.root", ev)
    with pytest.raises(DataError, match=r"zero.root: genWeight sums to 0 \(no events, or weights"):
        sum_of_weights([zero], "Events")
    with pytest.raises(DataError, match="r.root: branch 'genEventSumw' of 'Runs' sums to nan"):
        sum_of_weights([write_events(tmp_path / "r.root", events(4),
                                     runs={"genEventSumw": np.array([np.nan])})], "Events")
