"""Physics guard rails: each check flags the absurd result it is for, and only that."""

from __future__ import annotations

import hist
import numpy as np
import pytest
from conftest import default_config_dict

from diffana import guards
from diffana.config import load_dict
from diffana.exceptions import ConfigError


def codes(flags) -> list[str]:
    return [f.code for f in flags]


def filled(values, variances=None) -> hist.Hist:
    h = hist.Hist.new.Regular(len(values), 0, len(values)).Weight()
    h.view().value = values
    h.view().variance = values if variances is None else variances
    return h


def test_zero_background_is_flagged():
    totals = {"SR": {"ttbar": np.array([5.0, 3.0]), "wjets": np.array([0.0, 0.0])}}
    flags = guards.background_yields(totals, ["wjets"], "final")
    assert codes(flags) == ["background-nonpositive", "background-bin-nonpositive"]
    assert flags[0].where == "final/SR/wjets" and "bins 0, 1" in flags[1].message
    assert guards.background_yields({"SR": {"wjets": np.array([1.0, 2.0])}}, ["wjets"], "f") == []
    nothing_there = {"SR": {"ttbar": np.array([0.0, 3.0]), "wjets": np.array([0.0, 2.0])}}
    assert guards.background_yields(nothing_there, ["wjets"], "final") == []
    negative = {"SR": {"ttbar": np.array([1.0, 0.0]), "wjets": np.array([-5.0, 1.0])}}
    assert codes(guards.background_yields(negative, ["wjets"], "final")) == [
        "background-nonpositive", "total-nonpositive", "background-bin-nonpositive"]


def test_negative_bin_is_flagged_and_says_what_the_likelihood_does():
    flags = guards.negative_bins({"SR": {"wjets": (np.array([10.0, -415721.0]),
                                                   np.array([1.0, 1.0]))}}, "final")
    assert codes(flags) == ["negative-bins"]
    assert "bins 1" in flags[0].message and "-415721" in flags[0].message
    assert "nothing clipped" in flags[0].message


def test_floor_dominated_soft_objective():
    yields = {"SR": {"wjets": {"nominal": np.array([1.0, 1.2, 1.1])}}}
    flags = guards.floor_dominated(yields, {"SR": 1.0}, ["wjets"], "final")
    assert codes(flags) == ["floor-dominated"] and flags[0].where == "final/SR"
    big = {"SR": {"wjets": {"nominal": np.array([100.0, 80.0, 50.0])}}}
    assert guards.floor_dominated(big, {"SR": 1.0}, ["wjets"], "final") == []


def test_parameter_with_zero_gradient_is_unused():
    flags = guards.unused_parameters(np.array([0.3, 0.0]), ["jet_pt_min", "met_min"])
    assert codes(flags) == ["parameter-unused"] and flags[0].where == "met_min"


def test_parameter_on_bound():
    bounds = {"jet_pt_min": (20.0, 120.0), "btag_threshold": (0.05, 0.95)}
    flags = guards.on_bounds({"jet_pt_min": 120.0, "btag_threshold": 0.5}, bounds)
    assert codes(flags) == ["parameter-at-bound"] and "upper bound 120" in flags[0].message


def test_soft_and_hard_objectives_far_apart():
    assert codes(guards.soft_hard_gap(0.0, 4602.0, "final")) == ["soft-hard-gap"]
    assert guards.soft_hard_gap(2.0, 2.05, "final") == []
    assert guards.soft_hard_gap(float("nan"), 1.0, "final") == []


def test_run_flags_of_a_zero_background_run():
    cfg = load_dict(default_config_dict(1_000))
    hists = {stage: {"signal_region": {"ttbar": filled(np.full(15, 4.0)),
                                       "wjets": filled(np.zeros(15))}}
             for stage in ("initial", "final")}
    soft = {"final": {"signal_region": {"wjets": {"nominal": np.full(15, 1.0)}}}}
    params = {"jet_pt_min": 30.0, "btag_threshold": 0.95, "lepton_pt_min": 30.0}
    flags = guards.run_flags(cfg, hists, soft, np.array([0.1, 0.0, 0.2]), params,
                             {"final": (1563.0, 2.0)})
    assert codes(flags) == ["background-nonpositive", "background-bin-nonpositive"] * 2 + [
        "floor-dominated", "parameter-unused", "parameter-at-bound", "soft-hard-gap"]
    assert all(isinstance(f._asdict()["message"], str) for f in flags)


def test_luminosity_is_required_with_a_cross_section():
    data = default_config_dict(1_000)
    del data["luminosity"]
    with pytest.raises(ConfigError, match=r"luminosity: missing: samples ttbar, wjets"):
        load_dict(data)
    for sample in data["samples"].values():
        sample["normalisation"] = "none"
    assert load_dict(data).luminosity is None
