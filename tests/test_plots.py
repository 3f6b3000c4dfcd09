"""The run directory's figures and histograms: labels, uncertainty band, PDFs, ROOT titles."""

from __future__ import annotations

import json

import mplhep
import numpy as np
import pytest
import uproot
from conftest import default_config_dict, write_config
from matplotlib import style

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


@pytest.mark.parametrize("scale", [1.0, 1e7])  # 1e7: the y axes have an offset text
def test_template_labels_are_placed_on_the_laid_out_axes(small_config, tmp_path, monkeypatch,
                                                          scale):
    """The experiment's label is where mplhep puts it on the figure as laid out (its parts
    placed in fractions of the axes' final size, past an offset text), inside the figure."""
    drawn = []
    monkeypatch.setattr(plot, "save", lambda fig, path, **kw: drawn.append(fig))
    edges = small_config.regions["signal_region"].binning.edges
    rng = np.random.default_rng(1)
    hists = {stage: {"signal_region": {s: hard_histogram(rng.uniform(0, 1500, 500),
                                                          np.full(500, scale), edges)
                                       for s in ("ttbar", "wjets")}} for stage in ("a", "b")}
    plot.templates(hists, tmp_path / "histograms.png", small_config)
    (fig,) = drawn
    assert fig.get_layout_engine() is None  # laid out once, as it is saved
    inside = fig.bbox.padded(1.0)
    for ax in fig.axes:
        placed = {type(t).__name__: (t.get_position(), t.get_window_extent()) for t in ax.texts}
        assert set(placed) == {"ExpLabel", "ExpText", "LumiText"}
        for _, box in placed.values():
            assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
        offset = bool(ax.yaxis.get_offset_text().get_text())
        assert offset == (scale > 1)
        for text in list(ax.texts):
            text.remove()
        with style.context(mplhep.style.CMS):  # mplhep's spacing reads the style's font size
            plot.experiment_label(ax, small_config, offset=offset)
        again = {type(t).__name__: t.get_position() for t in ax.texts}
        for name, (position, _) in placed.items():
            assert again[name] == pytest.approx(position, abs=1e-9), name


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
