"""Yield and cutflow tables: the cutflow against plain boolean masks, the yields against the
hard histograms, and both in a run directory."""

from __future__ import annotations

import json
import logging
import re

import awkward as ak
import numpy as np
import pytest
from conftest import ROOT, default_config_dict, write_config

from diffana import tables
from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.run import TIMINGS, run


def boolean_mask_cutflow(events: ak.Array, weight: np.ndarray, p: dict) -> list:
    """configs/ttbar_vs_wjets.yaml's selection written plainly with Awkward boolean masks."""
    jets = (events.Jet_pt > p["jet_pt_min"]) & (abs(events.Jet_eta) < 2.4)
    bjets = jets & (events.Jet_btagCSVV2 > p["btag_threshold"])
    lepton_pt = ak.to_numpy(ak.fill_none(ak.firsts(events.Muon_pt), 0.0))
    masks = [np.ones(len(events), dtype=bool)]
    masks.append(masks[-1] & ak.to_numpy(ak.sum(jets, axis=1) >= 4))
    masks.append(masks[-1] & ak.to_numpy(ak.sum(bjets, axis=1) >= 1))
    masks.append(masks[-1] & (lepton_pt > p["lepton_pt_min"]))
    return [(float(weight[m].sum()), int(m.sum())) for m in masks]


@pytest.fixture(scope="module")
def held():
    return Analysis(load_dict(default_config_dict(3_000)), ROOT / "configs", progress=False)


@pytest.mark.parametrize("point", ["initial", "moved"])
def test_cutflow_equals_boolean_masks(held, point):
    p = held.initial_params()
    if point == "moved":
        p = dict(p, jet_pt_min=45.0, btag_threshold=0.3, lepton_pt_min=25.0)
    flows = tables.cutflow(held, p)
    assert list(flows) == ["ttbar", "wjets"]
    for sample, steps in flows.items():
        assert [s for s, _, _ in steps] == ["all events", "jets ≥ 4", "bjets ≥ 1",
                                            "lepton_pt > lepton_pt_min", "signal_region"]
        events = held.samples[sample].events
        expected = boolean_mask_cutflow(events.events, events.weight,
                                        {k: float(v) for k, v in p.items()})
        for (_, weighted, raw), (w, n) in zip(steps, expected, strict=False):
            assert raw == n
            assert weighted == pytest.approx(w, rel=1e-12)
        assert steps[-1][1:] == steps[-2][1:]  # the region adds no requirement of its own
        assert steps[-1][2] > 0


def test_streamed_cutflow_equals_held(held):
    data = default_config_dict(3_000) | {"streaming": True, "chunk_size": 1_000,
                                         "gradient": "forward"}
    streamed = Analysis(load_dict(data), ROOT / "configs", progress=False)
    p = held.initial_params()
    a, b = tables.cutflow(held, p), tables.cutflow(streamed, p)
    for sample in a:
        assert [(s, n) for s, _, n in a[sample]] == [(s, n) for s, _, n in b[sample]]
        np.testing.assert_allclose([w for _, w, _ in a[sample]], [w for _, w, _ in b[sample]],
                                   rtol=1e-12)


def test_yields_csv_equals_hard_histograms(held, tmp_path):
    p0 = held.initial_params()
    p1 = dict(p0, jet_pt_min=45.0)
    hists = {"initial": held.hard_histograms(p0), "final": held.hard_histograms(p1)}
    tables.write(tmp_path, hists, {"initial": None, "final": None})
    assert not (tmp_path / tables.CUTFLOW).exists()
    rows = tables.read_csv(tmp_path / tables.YIELDS)
    assert [(r["region"], r["sample"]) for r in rows] == [("signal_region", "ttbar"),
                                                          ("signal_region", "wjets")]
    for r in rows:
        for stage in ("initial", "final"):
            h = hists[stage][r["region"]][r["sample"]]
            assert float(r[stage]) == float(h.values().sum())
            assert float(r[f"{stage}_unc"]) == pytest.approx(np.sqrt(h.variances().sum()),
                                                            rel=1e-15)
    printed = tables.yields_table(rows)
    assert "signal_region final" in printed and "ttbar" in printed


class NoFigures:
    """Stands in for :mod:`diffana.plot`: the figures are tested on their own."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_run_writes_tables_and_warnings(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("diffana.outputs.plot", NoFigures())
    data = default_config_dict(2_000)
    data["parameters"]["met_min"] = {"value": 10.0, "bounds": [0.0, 50.0]}  # no cut uses it
    config = write_config(tmp_path / "c.yaml", data)
    printed = []
    with caplog.at_level(logging.INFO, logger="diffana"):
        results = run(config, steps=2, out=tmp_path / "run", progress=False,
                      echo=printed.append)
    # as it happens: the unused parameter right after the first step, before the hard cuts;
    # each phase with its seconds
    said = [r.getMessage() for r in caplog.records]
    unused = said.index(next(m for m in said if m.startswith("warning [parameter-unused]")))
    hard = said.index(next(m for m in said if m.startswith("hard-cut histograms")))
    assert said.index(next(m for m in said if m.startswith("compiled"))) < unused < hard
    assert re.search(r"^workspace, ROOT histograms, figures and tables: \d+\.\d s$", said[-1])
    assert [r.levelno for r in caplog.records if "warning [" in r.getMessage()] == [
        logging.WARNING] * len(results["warnings"])  # each said once
    timings = results["timings"]
    assert list(timings) == [*TIMINGS, "total_s"] and all(v >= 0 for v in timings.values())
    assert sum(timings[k] for k in TIMINGS) <= timings["total_s"]
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text())["warnings"] == results["warnings"]
    assert {"code": "parameter-unused", "where": "met_min"}.items() <= {
        k: v for w in results["warnings"] if w["where"] == "met_min" for k, v in w.items()
    }.items()
    rows = tables.read_csv(out / tables.CUTFLOW)
    assert {r["sample"] for r in rows} == {"ttbar", "wjets"}
    assert (out / tables.YIELDS).is_file()
    text = "\n".join(printed)
    assert "hard-cut yield" in text and "and the cutflow: yields.csv and cutflow.csv" in text
    assert "warning [parameter-unused] met_min" in text
    manifest = json.loads((out / ".diffana-run.json").read_text())["files"]
    assert tables.YIELDS in manifest and tables.CUTFLOW in manifest
