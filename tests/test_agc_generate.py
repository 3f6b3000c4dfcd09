"""The AGC event generator: NanoAOD-like files, reproducible, and the AGC reference yields.

The hard AGC selection (``analyses/agc_ttbar/compare_yields.py``, plain Awkward) on generated
events must give the reference yields of ``tests/data/agc/histos_5_file_per_process.json``
(the AGC histograms, normalised as σ·L/N) within 25 % in the fit range 110–550 GeV, for every
region and sample with enough selected events to tell.
"""

from __future__ import annotations

import json
import sys

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import DATA, ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analyses.agc_ttbar import compare_yields as cmp  # noqa: E402
from analyses.agc_ttbar.generate import (  # noqa: E402
    NOMINAL_SHARE,
    SAMPLES,
    SKIM,
    agc,
    event_weight,
    generate_sample,
    sample_sizes,
    skim,
)
from diffana.generate import GENERATORS  # noqa: E402
from diffana.io import sum_of_weights  # noqa: E402

REFERENCE = json.loads((DATA / "agc" / "histos_5_file_per_process.json").read_text())
SEED = 7

BRANCH_TYPES = {
    "Jet_pt": "float", "Jet_eta": "float", "Jet_phi": "float", "Jet_mass": "float",
    "Jet_btagCSVV2": "float", "Jet_jetId": "int32_t",
    "Electron_pt": "float", "Electron_eta": "float", "Electron_phi": "float",
    "Electron_mass": "float", "Electron_cutBased": "int32_t", "Electron_sip3d": "float",
    "Muon_pt": "float", "Muon_eta": "float", "Muon_phi": "float", "Muon_mass": "float",
    "Muon_tightId": "bool", "Muon_sip3d": "float", "Muon_pfRelIso04_all": "float",
}


def flat(events: dict) -> ak.Array:
    """In-memory collections as NanoAOD branches (``Jet_pt``, ...), as the files hold them."""
    out = {}
    for name, value in events.items():
        if isinstance(value, ak.Array):
            out.update({f"{name}_{field}": value[field] for field in value.fields})
        else:
            out[name] = value
    return ak.Array(out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("agc")
    return out, agc(out, 3_000, SEED)


def test_registered():
    assert GENERATORS["agc"] is agc


def test_files_branches_and_types(files):
    _, paths = files
    assert list(paths) == list(SAMPLES)
    sizes = sample_sizes(3_000)
    for sample, path in paths.items():
        assert path.name == f"{sample}.root"
        tree = uproot.open(path)["Events"]
        if sample in SKIM:  # skimmed: the Runs tree counts every event produced
            produced = uproot.open(path)["Runs"]["genEventSumw"].array(library="np")
            assert produced.tolist() == [sizes[sample] * SKIM[sample]]
            assert 0 < tree.num_entries < 0.2 * produced[0]
            assert sum_of_weights([path], "Events") == produced[0]
        else:
            assert tree.num_entries == sizes[sample]
        for branch, typename in BRANCH_TYPES.items():
            assert tree[branch].typename == f"{typename}[]", (sample, branch)
        assert tree["genWeight"].typename == "float"
        assert {"nJet", "nElectron", "nMuon"} <= set(tree.keys())
        events = tree.arrays(["Jet_pt", "Jet_btagCSVV2", "Jet_jetId", "Electron_cutBased",
                              "Muon_pt", "genWeight"])
        # collections sorted by decreasing pT; sensible values
        assert ak.all(events.Jet_pt[:, 1:] <= events.Jet_pt[:, :-1])
        assert ak.all(events.Muon_pt[:, 1:] <= events.Muon_pt[:, :-1])
        assert ak.all(events.Jet_pt >= 15.0)
        btag = ak.to_numpy(ak.flatten(events.Jet_btagCSVV2))
        assert np.all(((btag >= 0) & (btag <= 1)) | (btag == -10))
        assert set(np.unique(ak.flatten(events.Jet_jetId))) <= {0, 2, 6}
        assert set(np.unique(ak.flatten(events.Electron_cutBased))) <= {0, 1, 2, 3, 4}
        assert np.all(events.genWeight == 1.0)


def test_skim_keeps_every_selectable_event():
    """The skim drops only events that fail the AGC selection at the loosest allowed cuts."""
    events = generate_sample("wjets", 60_000, SEED)
    keep = skim(events)
    assert 0.001 < keep.mean() < 0.1
    full = cmp.agc_selection(flat(events))
    skimmed = cmp.agc_selection(flat({k: v[keep] for k, v in events.items()}))
    for region in full:
        selected = full[region][~np.isnan(full[region])]
        assert len(selected) > 0
        np.testing.assert_array_equal(skimmed[region][~np.isnan(skimmed[region])], selected)


def test_budget_and_normalisation():
    sizes = sample_sizes(300_000)
    assert sum(sizes[s] for s in NOMINAL_SHARE) == 300_000
    assert all(sizes[f"ttbar_{v}"] == sizes["ttbar"] // 2
               for v in ("ME_var", "PS_var", "scaleup", "scaledown"))
    assert event_weight("ttbar", 1000) == pytest.approx(729.84 * 3378 / 1000)
    assert event_weight("wjets", 10) == pytest.approx(15487.2 * 3378 / 10)


def test_files_are_the_generated_events(files):
    """Same seed: the same events, in memory and in the file; another seed: other events."""
    _, paths = files
    n = sample_sizes(3_000)["single_top_tW"]
    again = flat(generate_sample("single_top_tW", n, SEED))
    on_disk = uproot.open(paths["single_top_tW"])["Events"].arrays(list(BRANCH_TYPES))
    for branch in BRANCH_TYPES:
        assert ak.array_equal(on_disk[branch], again[branch]), branch
    other = flat(generate_sample("single_top_tW", n, SEED + 1))
    assert not ak.array_equal(other.Jet_pt, again.Jet_pt)
    twice = [flat(generate_sample("ttbar", 500, 3)) for _ in range(2)]
    for branch in BRANCH_TYPES:
        assert ak.array_equal(twice[0][branch], twice[1][branch]), branch


# Events per sample for the yield comparison: enough for ≥ 100 selected events where listed.
YIELD_SIZES = {
    "ttbar": 40_000, "ttbar_ME_var": 25_000, "ttbar_PS_var": 25_000, "ttbar_scaleup": 25_000,
    "ttbar_scaledown": 25_000, "single_top_tW": 25_000, "single_top_t_chan": 150_000,
    "single_top_s_chan": 70_000,
}
CHECKED = [(region, sample) for sample in YIELD_SIZES for region in cmp.REGIONS
           if not (sample == "single_top_s_chan" and region == "4j1b")]


@pytest.fixture(scope="module")
def selected():
    """``{sample: {region: (histogram, selected events)}}`` with the hard AGC selection."""
    out = {}
    for sample, n in YIELD_SIZES.items():
        observables = cmp.agc_selection(flat(generate_sample(sample, n, SEED)))
        w = event_weight(sample, n)
        out[sample] = {r: (cmp.histogram(v, w), int(np.sum(~np.isnan(v))))
                       for r, v in observables.items()}
    return out


@pytest.mark.parametrize(("region", "sample"), CHECKED)
def test_yields_match_the_agc_reference(selected, region, sample):
    hist, n_selected = selected[sample][region]
    assert n_selected >= 100  # relative statistical uncertainty ≤ 10 %
    reference = cmp.fit_yield(REFERENCE[f"{region}_{sample}"]["contents"])
    assert cmp.fit_yield(hist) == pytest.approx(reference, rel=0.25)


def test_peaks(selected):
    """m_bjj of ttbar peaks at the top mass; H_T peaks near the reference's 240 GeV."""
    assert 150.0 <= cmp.peak(selected["ttbar"]["4j2b"][0]) <= 200.0
    assert 200.0 <= cmp.peak(selected["ttbar"]["4j1b"][0]) <= 320.0
    assert 150.0 <= cmp.peak(selected["single_top_tW"]["4j2b"][0]) <= 200.0


def test_variations_go_the_reference_way(selected):
    """As in the reference: ME gives more events, PS fewer 2-b events per 1-b event (effects of
    15–25 %; the scale variations, 3–8 %, are within the statistics of this sample)."""
    def fit(sample, region):
        return cmp.fit_yield(selected[sample][region][0])

    assert fit("ttbar_ME_var", "4j1b") > 1.1 * fit("ttbar", "4j1b")
    assert (fit("ttbar_PS_var", "4j2b") / fit("ttbar_PS_var", "4j1b")
            < 0.95 * fit("ttbar", "4j2b") / fit("ttbar", "4j1b"))


@pytest.mark.slow
def test_rare_yields_match_the_agc_reference():
    """W+jets (≈ 1e-4 of its events pass) and single top s and t channel in 4j1b."""
    for sample, n in (("wjets", 2_500_000), ("single_top_s_chan", 300_000)):
        observables = cmp.agc_selection(flat(generate_sample(sample, n, SEED)))
        for region, values in observables.items():
            if sample == "single_top_s_chan" and region == "4j2b":
                continue
            assert np.sum(~np.isnan(values)) >= 100, (sample, region)
            reference = cmp.fit_yield(REFERENCE[f"{region}_{sample}"]["contents"])
            generated = cmp.fit_yield(cmp.histogram(values, event_weight(sample, n)))
            assert generated == pytest.approx(reference, rel=0.25), (sample, region)
