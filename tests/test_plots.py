"""The run directory's figures and histograms: labels, uncertainty band, PDFs, ROOT titles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import uproot
from conftest import default_config_dict, write_config

from diffana import plot, report
from diffana.config import load_dict
from diffana.histogram import hard_histogram
from diffana.run import run


def test_axis_labels_and_units(small_config):
    assert plot.axis_label(small_config, "signal_region") == "$H_{T}$ [GeV]"  # configured
    data = default_config_dict(5_000)
    del data["observables"]["ht"]["label"]
    data["observables"]["njets"] = {"kind": "count", "collection": "jets"}
    data["regions"]["by_count"] = {**data["regions"]["signal_region"], "observable": "njets"}
    cfg = load_dict(data, source="small")
    assert plot.axis_label(cfg, "signal_region") == "$H_{T}$ [GeV]"  # the sum of pt
    assert plot.axis_label(cfg, "by_count") == "number of jets"
    assert plot.parameter_units(cfg) == {"jet_pt_min": "GeV", "lepton_pt_min": "GeV"}


def test_band_of_a_histosys_adds_over_samples():
    ws = {"measurements": [{"config": {"parameters": [{"name": "lumi", "sigmas": [0.1]}]}}],
          "channels": [{"name": "SR", "samples": [
              {"data": [10.0], "modifiers": [
                  {"name": "jes", "type": "histosys", "data": {"hi_data": [12.0],
                                                               "lo_data": [8.0]}},
                  {"name": "lumi", "type": "lumi", "data": None}]},
              {"data": [30.0], "modifiers": [
                  {"name": "jes", "type": "histosys", "data": {"hi_data": [31.0],
                                                               "lo_data": [29.0]}},
                  {"name": "mu", "type": "normfactor", "data": None}]}]}]}
    # jes: 2 + 1 (correlated), lumi: 1 (10 % of 10), in quadrature
    assert plot.systematic_band(ws)["SR"] == pytest.approx([np.sqrt(3.0**2 + 1.0**2)])


def test_figures_for_any_number_of_rows(small_config, tmp_path):
    sens = {"jet_pt_min": {f"signal_region/s{i}": float(i - 20) for i in range(40)},
            "btag_threshold": {f"signal_region/s{i}": 0.1 * i for i in range(40)}}
    plot.sensitivity(sens, tmp_path / "sensitivity.png", small_config, top=8)
    assert (tmp_path / "sensitivity.png").stat().st_size > 0
    assert (tmp_path / "sensitivity.pdf").read_bytes().startswith(b"%PDF")
    edges = small_config.regions["signal_region"].binning.edges
    rng = np.random.default_rng(0)
    hists = {stage: {"signal_region": {s: hard_histogram(rng.uniform(0, 1500, 500),
                                                          np.ones(500), edges)
                                       for s in ("ttbar", "wjets")}} for stage in ("a", "b")}
    data = {stage: {"signal_region": hists[stage]["signal_region"]["wjets"] * 2.0}
            for stage in hists}
    band = {stage: {"signal_region": np.full(len(edges) - 1, 3.0)} for stage in hists}
    plot.templates(hists, tmp_path / "histograms.png", small_config, data, band)
    assert (tmp_path / "histograms.pdf").read_bytes().startswith(b"%PDF")


@pytest.fixture(scope="module")
def pseudodata_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots")
    data = default_config_dict(5_000)
    data["model"]["pseudodata"] = {"ttbar": 1.0, "wjets": 1.0}
    out = folder / "run"
    run(write_config(folder / "small.yaml", data), steps=2, out=out, progress=False, echo=None)
    return out


def test_run_directory_figures_and_histograms(pseudodata_run):
    out = pseudodata_run
    for figure in report.FIGURES:
        assert (out / f"{figure}.png").is_file() and (out / f"{figure}.pdf").is_file(), figure
    manifest = json.loads((out / report.MANIFEST).read_text())["files"]
    assert {report.SENSITIVITY_CSV, "histograms.pdf"} <= set(manifest)
    with uproot.open(out / "histograms.root") as f:
        for stage in ("initial", "final"):
            assert set(f[f"{stage}/signal_region"].keys(cycle=False)) == {
                "ttbar", "wjets", "pseudodata"}
            h = f[f"{stage}/signal_region/ttbar"]
            assert h.title == f"ttbar, signal_region, {stage} cuts"
            assert h.member("fXaxis").member("fTitle") == "$H_{T}$ [GeV]"
            total = (f[f"{stage}/signal_region/ttbar"].values()
                     + f[f"{stage}/signal_region/wjets"].values())
            assert f[f"{stage}/signal_region/pseudodata"].values() == pytest.approx(total)


def test_ratio_panel_range_holds_every_point():
    """The data/MC panel widens to show every point with its error and the MC band."""
    from diffana.plot import ratio_range

    assert ratio_range([1.02, 0.97], [0.01, 0.02], [0.03, 0.05]) == pytest.approx((0.8, 1.2))
    low, high = ratio_range([1.5, 0.7], [0.1, 0.05], [0.1, 0.1])
    assert low <= 0.65 and high >= 1.6 and low == pytest.approx(2 - high)
    assert ratio_range([np.nan], [np.nan], [np.nan]) == (0.5, 1.5)  # no MC anywhere
