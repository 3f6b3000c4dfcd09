"""The whole AGC selection of ``configs/agc_ttbar.yaml`` on real CMS NanoAOD, event by event.

With hard cuts (the temperature → 0 limit) diffana's soft selection must select the same
events into the same regions, with the same H_T and m_bjj, as a plain boolean-mask Awkward
analysis written here from the AGC's definitions.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import jax.numpy as jnp
import numpy as np
import pytest
import uproot
import yaml
from conftest import DATA, ROOT
from test_agc_observables import best_trijet_mass, read_jets

from diffana.analysis import Analysis
from diffana.config import load_dict


def real_file_config(path: Path, btag: str) -> dict:
    """configs/agc_ttbar.yaml on one real file (as signal and background), no systematics."""
    data = yaml.safe_load((ROOT / "configs" / "agc_ttbar.yaml").read_text())
    data["imports"] = [str(ROOT / "analyses" / "agc_ttbar" / "observables.py")]
    del data["generate"]
    data["preselect"] = False
    data["samples"] = {"ttbar": {"files": [str(path)], "cross_section": 1.0},
                       "wjets": {"files": [str(path)], "cross_section": 2.0}}
    data["variations"] = {}
    data["model"]["systematics"] = []
    data["model"]["pseudodata"] = {}
    data["objects"]["jets"]["fields"]["btag"] = btag
    return data


def agc_selection(path: Path, btag: str, lepton_pt_min: float, jet_pt_min: float,
                  btag_threshold: float) -> dict:
    """Region masks, H_T and m_bjj per event: the AGC selection with boolean masks."""
    ev = uproot.open(path)["Events"].arrays()
    electrons = ((ev.Electron_pt > lepton_pt_min) & (abs(ev.Electron_eta) < 2.1)
                 & (ev.Electron_cutBased == 4) & (ev.Electron_sip3d < 4))
    muons = ((ev.Muon_pt > lepton_pt_min) & (abs(ev.Muon_eta) < 2.1) & ev.Muon_tightId
             & (ev.Muon_sip3d < 4) & (ev.Muon_pfRelIso04_all < 0.15))
    n_e, n_mu = ak.sum(electrons, axis=1), ak.sum(muons, axis=1)
    jets = read_jets(path, btag)
    jets = jets[(jets.pt > jet_pt_min) & (abs(jets.eta) < 2.4) & ((jets.jetId & 4) == 4)]
    n_b = ak.sum(jets.btag > btag_threshold, axis=1)
    common = (((n_e == 1) & (n_mu == 0)) | ((n_e == 0) & (n_mu == 1))) & (ak.num(jets) >= 4)
    return {
        "4j1b": (ak.to_numpy(common & (n_b == 1)), ak.to_numpy(ak.sum(jets.pt, axis=1))),
        "4j2b": (ak.to_numpy(common & (n_b >= 2)),
                 ak.to_numpy(best_trijet_mass(jets, btag_threshold))),
    }


@pytest.mark.parametrize("filename,btag,at_least", [
    ("cms2015_wjets_nanoaod_200.root", "Jet_btagCSVV2", 1),  # W+jets: few pass
    ("nano_tt_v12.root", "Jet_btagDeepFlavB", 20),
])
def test_hard_agc_selection_event_by_event(filename, btag, at_least):
    path = DATA / filename
    ana = Analysis(load_dict(real_file_config(path, btag)), progress=False)
    selected = 0
    for cuts in ((30.0, 30.0, 0.5), (25.0, 25.0, 0.1), (40.0, 50.0, 0.8)):
        params = dict(ana.initial_params(), **{
            n: jnp.asarray(v) for n, v in zip(("lepton_pt_min", "jet_pt_min", "btag_threshold"),
                                             cuts, strict=True)})
        events = ana.region_events(params, hard=True)["ttbar"]
        expected = agc_selection(path, btag, *cuts)
        for region, (mask, value) in expected.items():
            x, w = (np.asarray(a) for a in events[region])
            np.testing.assert_array_equal(w > 0, mask, err_msg=f"{region} at {cuts}")
            np.testing.assert_allclose(w[mask], ana.samples["ttbar"].norm, rtol=1e-12)
            np.testing.assert_allclose(x[mask], value[mask], rtol=1e-9)
            selected += int(mask.sum())
    assert selected >= at_least  # the comparison is not vacuous
