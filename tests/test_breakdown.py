"""The sensitivity by sample, region and systematic (diffana.breakdown), its summary and CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from diffana import breakdown, guards, outputs, report, tables
from diffana.config import load

AGC = Path(__file__).parent.parent / "configs" / "agc_ttbar.yaml"


@pytest.fixture(scope="module")
def agc():
    return load(AGC)


def _sensitivity(cfg, params=("jet_pt_min", "btag_threshold")) -> dict:
    """A sensitivity with every region × template of ``cfg``, value 1 each but ttbar's 10."""
    templates = [*cfg.samples, *cfg.variation_samples()]
    return {p: {f"{r}/{t}": 10.0 if t == "ttbar" else 1.0 for r in cfg.regions
                for t in templates} for p in params}


def test_origins_of_the_agc_templates(agc):
    where = breakdown.origins(agc)
    assert where["ttbar"] == ("ttbar", "", breakdown.NOMINAL)
    assert where["ttbar_ME_var"] == ("ttbar", "ME_var", "me_variation")  # variation_of
    assert where["ttbar_scaledown"] == ("ttbar", "scaledown", "ttbar_scale")
    assert where["wjets_pt_scale_up"] == ("wjets", "pt_scale_up", "jet_energy_scale")
    assert where["wjets_scale_var_down"] == ("wjets", "scale_var_down", "wjets_scale")
    assert where["single_top_tW_btag_var_2_down"].systematic == "btag_np_3"
    # a variation no systematic reads: scale_var_* exists for wjets only, so nothing unused
    assert all(o.systematic != breakdown.UNUSED for o in where.values())


def test_groups_sum_to_the_total(agc):
    sens = _sensitivity(agc)
    rows = breakdown.contributions(sens, breakdown.origins(agc))
    assert len(rows) == sum(len(v) for v in sens.values())
    for by in breakdown.BY:
        totals = breakdown.aggregate(rows, by)
        for p, terms in sens.items():
            assert sum(totals[p].values()) == pytest.approx(sum(terms.values()))
    by_sample = breakdown.aggregate(rows, "sample")["jet_pt_min"]
    assert set(by_sample) == set(agc.nominal_samples)  # variations count to their sample
    # ttbar: nominal 10 + 4 own variations + 10 computed ones, in 2 regions
    assert by_sample["ttbar"] == 2 * (10 + 4 + 10)
    assert breakdown.aggregate(rows, "region")["jet_pt_min"]["4j1b"] == pytest.approx(
        sum(v for k, v in sens["jet_pt_min"].items() if k.startswith("4j1b/")))


def test_leading_keeps_the_largest_and_sums_the_rest():
    totals = {"a": {"x": 1.0, "y": -5.0, "z": 0.5, "w": 0.25}, "b": {"x": 3.0, "y": 0.0}}
    ranked = breakdown.leading(totals, 2)
    assert [name for name, _ in ranked] == ["y", "x", "other (2)"]
    assert ranked[-1][1] == {"a": 0.75, "b": 0.0}
    assert breakdown.leading(totals, 3) == [(g, {"a": totals["a"][g], "b": totals["b"].get(
        g, 0.0)}) for g in ("y", "x", "z", "w")]  # one left over keeps its name


def test_unknown_grouping_is_refused():
    with pytest.raises(ValueError, match="by must be one of"):
        breakdown.aggregate([], "bin")


def test_summary_fits_a_screen_and_csv_holds_every_row(agc, tmp_path):
    sens = _sensitivity(agc, ("lepton_pt_min", "jet_pt_min", "btag_threshold"))
    results = {"config": "agc_ttbar", "objective": "poi_uncertainty", "engine": "compiled",
               "steps_done": 3, "stopped": "steps", "wall_seconds": 1.0,
               "objective_initial": 1.0, "objective_final": 0.9,
               "hard": {"objective_initial": 1.0, "objective_final": 0.9},
               "params_initial": dict.fromkeys(sens, 1.0),
               "params_final": dict.fromkeys(sens, 2.0), "sensitivity": sens}
    results["warnings"] = [guards.Flag("parameter-at-bound", f"{p} ends on its lower bound", p)
                           ._asdict() for p in ("lepton_pt_min", "jet_pt_min")]
    results["inference"] = {"file": "inference.json", "poi": "ttbar_norm", "bestfit": [1.0, 0.1],
                            "upper_limit": {"level": 0.05, "observed": 1.2,
                                            "expected": [0.5, 0.7, 1.0, 1.4, 1.9]},
                            "significance": {"observed": 11.8, "expected": 11.5}}
    report.write_csv(tmp_path / tables.YIELDS, [
        tables.YieldRow(r, s, 23051.5, 970.0, 12902.3, 730.0)
        for r in agc.regions for s in agc.samples])
    text = outputs.summary(results, agc, tmp_path)  # all that a run prints at its end
    assert len(text.splitlines()) <= 30, text
    assert "sample ttbar" in text and "nominal templates" in text and "region 4j2b" in text
    assert report.SENSITIVITY_CSV in text and f"run directory: {tmp_path}" in text
    assert all(f"\n{s} " in text for s in agc.nominal_samples)  # each sample's yields
    assert text.count("warning [parameter-at-bound]") == 2
    assert "upper limit on ttbar_norm (95% CL)" in text and "significance: observed" in text
    assert "streamed" not in text.splitlines()[0]
    results["streaming"] = {"streamed": True, "why": "streamed: streaming: true"}
    assert "(compiled engine, streamed, 3 steps" in report.summary(results, agc)
    path = tmp_path / report.SENSITIVITY_CSV
    report.write_sensitivity_csv(path, sens, agc)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(sens["jet_pt_min"])
    me = next(r for r in rows if r["template"] == "ttbar_ME_var")
    assert (me["sample"], me["variation"], me["systematic"]) == ("ttbar", "ME_var",
                                                                 "me_variation")
    assert sum(float(r["d_objective"]) for r in rows if r["parameter"] == "jet_pt_min") == \
        pytest.approx(sum(sens["jet_pt_min"].values()))
