"""Bad input data: each case a one-line DataError naming the file, the tree or branch, the
value and what was expected, or a documented safe behaviour (reading: test_io.py)."""

from __future__ import annotations

import warnings

import awkward as ak
import jax
import numpy as np
import pytest
from conftest import write_config

from diffana.analysis import Analysis
from diffana.checks import NonFiniteWarning, Origin, check_events, summary
from diffana.cli import main
from diffana.config import load_dict
from diffana.exceptions import DataError
from diffana.io import write_events
from diffana.ragged import Plan


def nano(n: int, seed: int = 0) -> dict:
    """NanoAOD-like events: jets (pt, eta) and MET."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(4, n)
    k = int(counts.sum())
    jets = ak.unflatten(ak.zip({"pt": 20.0 + rng.exponential(40.0, k),
                                "eta": rng.normal(0.0, 1.5, k)}), counts)
    return {"Jet": jets, "MET_pt": rng.exponential(40.0, n)}


def config(signal: list, background: list, n_total: int | None = 1000, **top) -> dict:
    """Jets with a soft pT cut (H_T) and MET, one region each."""
    sample = {"cross_section": 1.0} | ({"n_total": n_total} if n_total else {})
    return {
        "luminosity": 1.0,
        "samples": {"s": sample | {"files": [str(f) for f in signal]},
                    "b": sample | {"files": [str(f) for f in background], "cross_section": 3.0}},
        "parameters": {"pt_min": {"value": 30.0, "bounds": [0.0, 100.0]}},
        "objects": {"jets": {"source": "Jet", "fields": {"pt": "Jet_pt", "eta": "Jet_eta"},
                             "cuts": [{"field": "pt", "above": "pt_min"},
                                      {"field": "eta", "abs": True, "below": 2.4}]}},
        "observables": {"ht": {"kind": "sum", "collection": "jets", "field": "pt"},
                        "met": {"kind": "branch", "options": {"branch": "MET_pt"}}},
        "regions": {"SR": {"observable": "ht", "binning": {"bins": 5, "low": 0, "high": 500},
                           "bandwidth": 20.0},
                    "MET": {"observable": "met", "binning": {"bins": 4, "low": 0, "high": 200},
                            "bandwidth": 10.0}},
        "model": {"signal": ["s"]},
        **top,
    }


def analysis(data: dict) -> Analysis:
    return Analysis(load_dict(data), progress=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"s": write_events(d / "s.root", nano(400, 1)),
            "b": write_events(d / "b.root", nano(400, 2)),
            "empty": write_events(d / "empty.root", nano(0))}


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --- files ----------------------------------------------------------------------------------


def test_truncated_file_cli(tmp_path, files, capsys):
    """A truncated input file: exit 2 and one line naming it, from validate and from run."""
    raw = files["b"].read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(raw[:len(raw) // 2])
    path = write_config(tmp_path / "c.yaml", config([files["s"]], [cut]))
    for args in (["validate", str(path)],
                 ["run", str(path), "--steps", "0", "--out", str(tmp_path / "run"), "--quiet"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err == (f"diffana: error: {cut}: truncated ROOT file: {len(raw) // 2} bytes of "
                       f"the {len(raw)} its header records (an interrupted copy or write?)\n")
    assert not (tmp_path / "run" / "results.json").exists()


def test_empty_tree_in_one_file_is_skipped(files):
    """A file with 0 entries adds nothing: the same yields as without it."""
    with_empty = analysis(config([files["empty"], files["s"]], [files["b"], files["empty"]]))
    without = analysis(config([files["s"]], [files["b"]]))
    p = with_empty.initial_params()
    for region in ("SR", "MET"):
        for s in ("s", "b"):
            np.testing.assert_array_equal(with_empty.yields(p)[region][s]["nominal"],
                                          without.yields(p)[region][s]["nominal"])


@pytest.mark.parametrize("streaming", [False, True])
def test_no_events_at_all(files, streaming):
    """Every file of every sample empty: a DataError, in memory and streaming."""
    data = config([files["empty"]], [files["empty"]], streaming=streaming)
    with pytest.raises(DataError, match="no events") as err:
        analysis(data)
    one_line(err)


def test_no_events_without_n_total(files):
    with pytest.raises(DataError, match="no events"):
        analysis(config([files["empty"]], [files["empty"]], n_total=None))


# --- structure ------------------------------------------------------------------------------


def write_branches(path, branches: dict):
    """Branches as given: a jagged array gets a counter of its own (``nJet_pt``)."""
    return write_events(path, branches)


def test_jagged_branch_written_flat(tmp_path, files):
    """``Jet_pt`` written one number per event (no offsets) next to a jagged ``Jet_eta``:
    read as it is, each jet of an event would get that number; a DataError instead."""
    ev = nano(300, 3)
    jets = ev["Jet"]
    flat = write_branches(tmp_path / "flat.root", {
        "Jet_pt": ak.to_numpy(ak.fill_none(ak.firsts(jets.pt), 0.0)), "Jet_eta": jets.eta,
        "MET_pt": ev["MET_pt"]})
    with pytest.raises(DataError) as err:
        analysis(config([files["s"]], [flat]))
    assert one_line(err) == (
        f"{flat}: branch 'Jet_pt' of tree 'Events' has one float64 per event; expected one list "
        "per event (a jagged branch with a counter such as nJet, like 'Jet_eta')")


@pytest.mark.parametrize("streaming", [False, True])
def test_files_of_a_sample_differ_in_structure(tmp_path, files, streaming):
    """Read together in memory, files whose branch types differ: the message names the file
    with the flat branch (in memory the files are concatenated first; streaming reads each)."""
    ev = nano(300, 3)
    flat = write_branches(tmp_path / "flat.root", {
        "Jet_pt": ak.to_numpy(ak.fill_none(ak.firsts(ev["Jet"].pt), 0.0)),
        "Jet_eta": ev["Jet"].eta, "MET_pt": ev["MET_pt"]})
    with pytest.raises(DataError, match=rf"^{flat}: branch 'Jet_pt' of tree 'Events' has one "
                                        "float64 per event; expected one list per event") as err:
        analysis(config([files["s"], flat], [files["b"]], streaming=streaming))
    one_line(err)


def test_counters_disagree(tmp_path, files):
    """``Jet_eta`` with another number of values than ``Jet_pt`` in some event (two counters
    that disagree): a DataError naming the branch and the first such entry."""
    ev = nano(300, 4)
    eta = ak.to_list(ev["Jet"].eta)
    eta[7] = eta[7] + [0.0]
    bad = write_branches(tmp_path / "counts.root", {
        "Jet_pt": ev["Jet"].pt, "Jet_eta": ak.Array(eta), "MET_pt": ev["MET_pt"]})
    n = len(ev["Jet"].pt[7])
    with pytest.raises(DataError) as err:
        analysis(config([bad], [files["b"]]))
    assert one_line(err) == (
        f"{bad}: branch 'Jet_eta' of tree 'Events' has {n + 1} values at entry 7 where 'Jet_pt' "
        f"has {n}; expected one count per event for all Jet branches, one counter: nJet")


def test_event_branch_written_jagged(tmp_path, files):
    """A per-event branch (``MET_pt``) that turns out to hold a list per event."""
    ev = nano(300, 5)
    ev["MET_pt"] = ak.unflatten(np.repeat(ev["MET_pt"], 2), np.full(300, 2))
    bad = write_events(tmp_path / "met.root", ev)
    with pytest.raises(DataError) as err:
        analysis(config([files["s"]], [bad]))
    assert one_line(err) == (f"{bad}: branch 'MET_pt' of tree 'Events' has a list per event "
                             "(var * float64); expected one number per event")


# --- NaN and inf ----------------------------------------------------------------------------


def with_nonfinite(ev: dict) -> tuple[dict, dict]:
    """``ev`` with a NaN jet pT, an inf jet eta and a NaN MET, and the same events with those
    jets and that event removed (what ``nonfinite: drop`` should read)."""
    pt = ak.to_numpy(ak.flatten(ev["Jet"].pt)).copy()
    eta = ak.to_numpy(ak.flatten(ev["Jet"].eta)).copy()
    counts = ak.to_numpy(ak.num(ev["Jet"]))
    pt[3], eta[10] = np.nan, -np.inf
    met = ev["MET_pt"].copy()
    met[20] = np.nan
    bad = {"Jet": ak.unflatten(ak.zip({"pt": pt, "eta": eta}), counts), "MET_pt": met}
    keep_jet = np.ones(len(pt), bool)
    keep_jet[[3, 10]] = False
    clean_jets = ak.unflatten(ak.zip({"pt": pt, "eta": eta}), counts)[
        ak.unflatten(keep_jet, counts)]
    keep = np.arange(len(met)) != 20
    return bad, {"Jet": clean_jets[keep], "MET_pt": met[keep]}


def test_nonfinite_stop_cli(tmp_path, files, capsys):
    """Default ``nonfinite: stop``: exit 2, one line with the file, branch, count and entry."""
    bad, _ = with_nonfinite(nano(300, 6))
    path = write_events(tmp_path / "nan.root", bad)
    counts = ak.to_numpy(ak.num(bad["Jet"]))
    entry = int(np.searchsorted(np.cumsum(counts), 3, side="right"))
    cfg = write_config(tmp_path / "c.yaml", config([path], [files["b"]]))
    assert main(["run", str(cfg), "--steps", "0", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"diffana: error: {path}: branch 'Jet_pt' of tree 'Events' has 1 NaN/inf values (the "
        f"first, nan, at entry {entry}); expected finite numbers (nonfinite: drop drops the "
        "objects or events that have them)\n")


def test_nonfinite_stop_event_branch(tmp_path, files):
    ev = nano(300, 7)
    ev["MET_pt"][[5, 9]] = [np.inf, np.nan]
    path = write_events(tmp_path / "met.root", ev)
    with pytest.raises(DataError) as err:
        analysis(config([files["s"]], [files["b"], path]))
    assert one_line(err) == (
        f"{path}: branch 'MET_pt' of tree 'Events' has 2 NaN/inf values (the first, inf, at "
        "entry 5); expected finite numbers (nonfinite: drop drops the objects or events that "
        "have them)")


@pytest.mark.parametrize("streaming", [False, True])
def test_nonfinite_drop(tmp_path, files, streaming):
    """``nonfinite: drop``: a jet with a NaN/inf field leaves the event (all its fields), an
    event with a NaN/inf event branch is dropped; the yields are those of the file written
    without them (same N_total), and the counts are reported once, however often the
    files are read (streaming reads them on every evaluation)."""
    bad, clean = with_nonfinite(nano(300, 8))
    bad_path = write_events(tmp_path / "nan.root", bad)
    clean_path = write_events(tmp_path / "clean.root", clean)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWarning)
        dropped = analysis(config([bad_path], [files["b"]], nonfinite="drop", streaming=streaming))
        expected = analysis(config([clean_path], [files["b"]], streaming=streaming))
        p = dropped.initial_params()
        for _ in range(2):
            got, want = dropped.yields(p), expected.yields(p)
            for region in ("SR", "MET"):
                np.testing.assert_allclose(got[region]["s"]["nominal"],
                                           want[region]["s"]["nominal"], rtol=1e-12)
    said = [str(w.message) for w in caught if w.category is NonFiniteWarning]
    assert said == [f"sample 's' ({bad_path}): dropped NaN/inf values (Jet_pt: 1, Jet_eta: 1, "
                    "MET_pt: 1), 2 Jet objects and 1 events (nonfinite: drop)"]
    assert summary(dropped.readers) == {"s": {
        "values": {"Jet_pt": 1, "Jet_eta": 1, "MET_pt": 1},
        "dropped_objects": {"Jet": 2}, "dropped_events": 1}}


def test_check_events_drop_keeps_collections_consistent():
    """Dropping an object removes it from every branch of its collection and updates its
    counter (``nJet``) if read; an event branch's NaN drops the event (``keep``)."""
    the_plan = Plan({}, {"jets": {"pt": "Jet_pt", "eta": "Jet_eta"}, "muons": {"pt": "Muon_pt"}},
                    ("MET_pt",))
    events = ak.Array({
        "nJet": np.array([2, 1, 3], np.int32),
        "Jet_pt": [[50.0, np.inf], [40.0], [30.0, 20.0, 10.0]],
        "Jet_eta": [[0.1, 0.2], [np.nan], [0.3, 0.4, 0.5]],
        "Muon_pt": [[25.0], [], [np.nan]],
        "MET_pt": [10.0, 20.0, 30.0],
        "genWeight": [1.0, 1.0, np.nan],
    })
    branches = list(events.fields)
    origin = Origin(["a.root"], "Events", np.zeros(3, int), np.arange(3))
    kept, keep, report = check_events(events, the_plan, branches, "drop", origin)
    assert keep.tolist() == [True, True, False]
    assert kept.tolist() == [
        {"nJet": 1, "Jet_pt": [50.0], "Jet_eta": [0.1], "Muon_pt": [25.0], "MET_pt": 10.0,
         "genWeight": 1.0},
        {"nJet": 0, "Jet_pt": [], "Jet_eta": [], "Muon_pt": [], "MET_pt": 20.0, "genWeight": 1.0}]
    assert report.values == {"Jet_pt": 1, "Jet_eta": 1, "Muon_pt": 1, "genWeight": 1}
    assert report.objects == {"Jet": 2, "Muon": 1} and report.events == 1
    with pytest.raises(DataError, match=r"^a.root: branch 'Jet_pt' of tree 'Events' has 1 NaN/inf "
                                        r"values \(the first, inf, at entry 0\)"):
        check_events(events, the_plan, branches, "stop", origin)
    clean = events[:0]
    assert check_events(clean, the_plan, branches, "stop", origin)[0] is clean


# --- empty regions and bins -----------------------------------------------------------------


@pytest.mark.parametrize("case", ["some regions", "all regions"])
def test_empty_region_objective_stays_finite(files, case):
    """A region whose cuts select no event, or whose bins the events never reach, or no event
    selected at all: the yields are the per-bin ``floor`` (default 1e-3), and the objective
    and its gradient stay finite."""
    data = config([files["s"]], [files["b"]])
    sr = data["regions"]["SR"]
    impossible = [{"observable": "ht", "above": 1.0e7}]  # a hard cut: weight exactly 0
    if case == "some regions":
        data["regions"]["none_selected"] = sr | {"selection": impossible}
        data["regions"]["outside"] = sr | {"binning": {"bins": 3, "low": 1e5, "high": 2e5}}
        empty = ["none_selected", "outside"]
    else:
        data["selection"] = impossible
        empty = ["SR", "MET"]
    ana = analysis(data)
    p = ana.initial_params()
    yields = ana.yields(p)
    for region in empty:
        for s in ("s", "b"):
            np.testing.assert_allclose(yields[region][s]["nominal"], 1e-3, rtol=1e-9)
    value, grad = jax.value_and_grad(ana.objective)(p)
    assert np.isfinite(value) and all(np.isfinite(g) for g in grad.values())
