"""``diffana infer`` against pyhf and cabinetry: CLs with its band, upper limits, the
significance, the best fit, the ranking and the scan, on a two-channel workspace with every
modifier type and different bin counts; the guard rails; the command line."""

from __future__ import annotations

import json

import jax
import numpy as np
import pyhf
import pytest
from scipy.stats import norm

from diffana.cli import main
from diffana.exceptions import DiffanaError
from diffana.inference import infer, parse_interpolation
from diffana.stats import Model
from diffana.stats.modifiers import modifier_settings

KEYS = ["poi", "twice_nll", "bestfit", "correlation", "cls", "upper_limit", "significance",
        "ranking", "scan", "warnings"]


def workspace() -> dict:
    """Two channels (3 and 2 bins); normfactor, lumi, normsys, histosys, staterror, shapesys,
    shapefactor; a second measurement with POI bounds that exclude 0."""
    lumi = {"name": "lumi", "type": "lumi", "data": None}
    mu = {"name": "mu", "type": "normfactor", "data": None}
    bkg_norm = {"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.88}}
    sr = {"name": "SR", "samples": [
        {"name": "signal", "data": [4.0, 7.0, 3.0],
         "modifiers": [mu, lumi, {"name": "sig_theory", "type": "normsys",
                                  "data": {"hi": 1.08, "lo": 0.94}}]},
        {"name": "ttbar", "data": [40.0, 25.0, 12.0],
         "modifiers": [lumi, bkg_norm,
                       {"name": "jes", "type": "histosys",
                        "data": {"hi_data": [43.0, 26.0, 11.5], "lo_data": [37.5, 24.1, 12.8]}},
                       {"name": "staterror_SR", "type": "staterror", "data": [2.0, 1.6, 1.1]}]},
        {"name": "wjets", "data": [15.0, 6.0, 2.0],
         "modifiers": [{"name": "wjets_shape", "type": "shapesys", "data": [3.0, 1.5, 0.8]},
                       {"name": "staterror_SR", "type": "staterror", "data": [1.0, 0.8, 0.5]}]}]}
    cr = {"name": "CR", "samples": [
        {"name": "signal", "data": [0.5, 0.2], "modifiers": [mu, lumi]},
        {"name": "ttbar", "data": [120.0, 80.0],
         "modifiers": [lumi, bkg_norm,
                       {"name": "jes", "type": "histosys",
                        "data": {"hi_data": [126.0, 82.0], "lo_data": [115.0, 79.0]}},
                       {"name": "cr_shape", "type": "shapefactor", "data": None}]}]}
    lumi_config = {"name": "lumi", "auxdata": [1.0], "sigmas": [0.02], "bounds": [[0.9, 1.1]],
                   "inits": [1.0]}
    return {
        "channels": [sr, cr],
        "observations": [{"name": "SR", "data": [61.0, 38.0, 16.0]},
                         {"name": "CR", "data": [118.0, 85.0]}],
        "measurements": [
            {"name": "main", "config": {"poi": "mu", "parameters": [lumi_config]}},
            {"name": "narrow", "config": {"poi": "mu", "parameters": [
                lumi_config, {"name": "mu", "bounds": [[0.2, 1.5]], "inits": [1.0]}]}},
        ],
        "version": "1.0.0",
    }


def pyhf_model(ws: dict, codes: dict | None = None, measurement: str | None = None):
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-6))
    w = pyhf.Workspace(ws)
    model = w.model(measurement_name=measurement, modifier_settings=modifier_settings(codes))
    return model, w.data(model)


@pytest.fixture(scope="module")
def result():
    return infer(workspace())


@pytest.fixture(scope="module")
def reference():
    return pyhf_model(workspace())


def test_structure_is_the_issue_s(result):
    assert list(result) == KEYS
    assert result["poi"] == "mu" and result["warnings"] == []
    assert len(result["cls"]["expected"]) == 5 and len(result["upper_limit"]["expected"]) == 5
    assert set(result["ranking"][0]) == {"parameter", "pull", "prefit", "postfit"}
    json.dumps(result, allow_nan=False)  # no NaN or inf in the file


def test_cls_and_band_equal_pyhf_hypotest(result, reference):
    model, data = reference
    observed, band = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde",
                                         return_expected_set=True)
    assert result["cls"]["observed"] == pytest.approx(float(observed), rel=1e-5)
    assert result["cls"]["expected"] == pytest.approx(np.asarray(band, dtype=float), rel=1e-5)
    assert result["cls"]["expected"] == sorted(result["cls"]["expected"])


@pytest.mark.long  # ~30 s: pyhf's own limit search (.ci/run runs it)
def test_upper_limits_equal_pyhf(result, reference):
    model, data = reference
    observed, expected = pyhf.infer.intervals.upper_limits.toms748_scan(
        data, model, 0.0, 10.0, rtol=1e-9, atol=1e-12)
    assert result["upper_limit"]["observed"] == pytest.approx(float(observed), rel=1e-5)
    assert result["upper_limit"]["expected"] == pytest.approx(
        np.asarray(expected, dtype=float), rel=1e-5)


def test_significance_equals_pyhf_q0(result, reference):
    model, data = reference
    p0, p0_expected = pyhf.infer.hypotest(0.0, data, model, test_stat="q0",
                                          return_expected=True)
    assert result["significance"]["observed"] == pytest.approx(norm.isf(float(p0)), rel=1e-5)
    assert result["significance"]["expected"] == pytest.approx(
        norm.isf(float(p0_expected)), rel=1e-5)


@pytest.mark.long  # 35 s: pyhf's fits (.ci/run runs it)
def test_bestfit_and_errors_equal_pyhf(result, reference):
    """Values against pyhf's fit; errors and correlations against the exact Hessian of
    pyhf's own likelihood (JAX backend) at the best fit."""
    model, data = reference
    bestfit, twice_nll = pyhf.infer.mle.fit(data, model, return_fitted_val=True)
    names = model.config.par_names
    ours = np.array([result["bestfit"][n]["value"] for n in names])
    assert ours == pytest.approx(np.asarray(bestfit), abs=2e-5)
    assert result["twice_nll"] == pytest.approx(float(twice_nll), abs=1e-8)

    pyhf.set_backend("jax")
    try:
        jax_model = pyhf.Workspace(workspace()).model()
        free = np.flatnonzero(~np.asarray(jax_model.config.suggested_fixed()))

        def twice_nll_of(x):
            pars = jax.numpy.asarray(ours).at[free].set(x)
            return -2.0 * jax_model.logpdf(pars, jax.numpy.asarray(data))[0]

        hessian = np.asarray(jax.hessian(twice_nll_of)(jax.numpy.asarray(ours[free])))
    finally:
        pyhf.set_backend("numpy")
    covariance = 2.0 * np.linalg.inv(hessian)
    errors = np.sqrt(np.diag(covariance))
    assert [result["bestfit"][names[i]]["error"] for i in free] == pytest.approx(errors, rel=1e-6)
    assert result["correlation"]["parameters"] == [names[i] for i in free]
    assert np.array(result["correlation"]["matrix"]) == pytest.approx(
        covariance / np.outer(errors, errors), abs=1e-6)


def test_ranking_equals_cabinetry(result, reference):
    """cabinetry's ranking with diffana's best fit and uncertainties: the same impacts; the
    order is cabinetry's (decreasing larger post-fit impact)."""
    cabinetry = pytest.importorskip("cabinetry")
    model, data = reference
    names = model.config.par_names
    fit = cabinetry.fit.FitResults(
        np.array([result["bestfit"][n]["value"] for n in names]),
        np.array([result["bestfit"][n]["error"] for n in names]),
        names, np.eye(len(names)), result["twice_nll"])
    ranking = cabinetry.fit.ranking(model, data, fit_results=fit, tolerance=1e-6)
    expected = {label: (down_pre, up_pre, down_post, up_post) for label, up_pre, down_pre,
                up_post, down_post in zip(ranking.labels, ranking.prefit_up,
                                          ranking.prefit_down, ranking.postfit_up,
                                          ranking.postfit_down, strict=True)}
    assert sorted(r["parameter"] for r in result["ranking"]) == sorted(expected)
    for row in result["ranking"]:
        want = expected[row["parameter"]]
        assert row["prefit"] + row["postfit"] == pytest.approx(want, abs=2e-4), row
    impact = [max(abs(r["postfit"][0]), abs(r["postfit"][1])) for r in result["ranking"]]
    assert impact == sorted(impact, reverse=True)
    rows = {r["parameter"]: r for r in result["ranking"]}
    lumi = result["bestfit"]["lumi"]
    assert rows["lumi"]["pull"] == pytest.approx([(lumi["value"] - 1.0) / 0.02,
                                                  lumi["error"] / 0.02], rel=1e-12)
    shape = result["bestfit"]["cr_shape[0]"]  # unconstrained: the value itself
    assert rows["cr_shape[0]"]["pull"] == [shape["value"], shape["error"]]


def test_scan_equals_pyhf_fixed_poi_fits(result, reference):
    model, data = reference
    scan = result["scan"]
    assert len(scan["poi_values"]) == 31 and min(scan["delta_twice_nll"]) >= -1e-9
    for mu, delta in list(zip(scan["poi_values"], scan["delta_twice_nll"], strict=True))[::10]:
        _, twice_nll = pyhf.infer.mle.fixed_poi_fit(mu, data, model, return_fitted_val=True)
        assert delta + result["twice_nll"] == pytest.approx(float(twice_nll), abs=1e-6)


@pytest.mark.parametrize("codes", [{"normsys": "code1"}, {"histosys": "code0"}])
def test_interpolation_codes_equal_pyhf(codes):
    ws = workspace()
    model, data = pyhf_model(ws, codes)
    ours = Model(ws, modifier_settings=modifier_settings(codes))
    rng = np.random.default_rng(1)
    alphas = [model.config.par_slice(n).start for n in ("jes", "bkg_norm", "sig_theory")]
    for _ in range(6):
        pars = np.asarray(model.config.suggested_init(), dtype=float)
        pars[alphas] = rng.uniform(-2.0, 2.0, len(alphas))
        want = float(model.logpdf(pars, data)[0])
        assert float(ours.logpdf(pars, data, ours.templates())) == pytest.approx(want, rel=1e-12)


def test_code1_hypotest_equals_pyhf():
    codes = {"normsys": "code1"}
    ours = infer(workspace(), interpolation=codes, poi_value=2.0)
    model, data = pyhf_model(workspace(), codes)
    observed, band = pyhf.infer.hypotest(2.0, data, model, test_stat="qtilde",
                                         return_expected_set=True)
    assert ours["cls"]["poi_value"] == 2.0
    assert ours["cls"]["observed"] == pytest.approx(float(observed), rel=1e-5)
    assert ours["cls"]["expected"] == pytest.approx(np.asarray(band, dtype=float), rel=1e-5)


def test_interpolation_option_is_checked():
    assert parse_interpolation(["normsys:code1", "histosys:code0"]) == {
        "normsys": "code1", "histosys": "code0"}
    for bad, words in [("normsys", "TYPE:CODE"), ("normsys:code2", "not supported"),
                       ("staterror:code1", "no interpolation")]:
        with pytest.raises(DiffanaError, match=words):
            parse_interpolation([bad])


# --- guard rails ------------------------------------------------------------------------------


def test_poi_bounds_without_zero_give_no_significance():
    out = infer(workspace(), measurement="narrow")
    assert out["significance"] == {"observed": None, "expected": None}
    assert out["upper_limit"]["observed"] is None
    assert any("0 is outside the bounds [0.2, 1.5]" in w for w in out["warnings"])
    with pytest.raises(DiffanaError, match=r"--poi-value: 2 is outside the bounds \[0.2, 1.5\]"):
        infer(workspace(), measurement="narrow", poi_value=2.0)
    with pytest.raises(DiffanaError, match="no measurement 'nope'.*main, narrow"):
        infer(workspace(), measurement="nope")


def test_zero_background_and_poi_at_bound_are_warned():
    """A signal-only bin: q0 is infinite, so no significance; a deficit: mu at 0."""
    ws = {"channels": [{"name": "SR", "samples": [
        {"name": "signal", "data": [3.0, 2.0],
         "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
        {"name": "bkg", "data": [10.0, 0.0],
         "modifiers": [{"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]},
    ]}], "observations": [{"name": "SR", "data": [7.0, 0.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0"}
    out = infer(ws)
    assert out["significance"]["observed"] is None
    assert any("zero expected background" in w for w in out["warnings"])
    assert any("mu is at its lower bound 0" in w for w in out["warnings"])
    assert out["bestfit"]["mu"]["value"] == 0.0


# --- the command line -------------------------------------------------------------------------


def test_cli_writes_inference_and_figures(tmp_path, capsys):
    spec = pyhf.simplemodels.uncorrelated_background([5.0, 10.0], [50.0, 20.0], [5.0, 4.0])
    ws = {"channels": spec.spec["channels"],
          "observations": [{"name": "singlechannel", "data": [52.0, 24.0]}],
          "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
          "version": "1.0.0"}
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(ws))
    assert main(["infer", str(path), "--out", str(tmp_path / "out"), "--level", "0.1"]) == 0
    out = json.loads((tmp_path / "out" / "inference.json").read_text())
    assert list(out) == KEYS and out["upper_limit"]["level"] == 0.1
    model = pyhf.Workspace(ws).model()
    observed, _ = pyhf.infer.intervals.upper_limits.toms748_scan(
        pyhf.Workspace(ws).data(model), model, 0.0, 10.0, level=0.1, rtol=1e-9, atol=1e-12)
    assert out["upper_limit"]["observed"] == pytest.approx(float(observed), rel=1e-5)
    for name in ("cls_scan", "ranking", "likelihood_scan", "correlation"):
        for suffix in (".png", ".pdf"):
            assert (tmp_path / "out" / f"{name}{suffix}").stat().st_size > 1000
    assert "upper limit (90% CL)" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--poi-value", "20"], "--poi-value: 20 is outside the bounds"),
    (["--measurement", "other"], "no measurement 'other'"),
    (["--interpolation", "histosys:code1"], "histosys 'code1' is not supported"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, words):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(workspace()))
    assert main(["infer", str(path), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_cli_rejects_an_invalid_workspace(tmp_path, capsys):
    ws = workspace()
    del ws["observations"][0]["data"]
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(ws))
    assert main(["infer", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a valid pyhf workspace" in err and "'data' is a required property" in err
    assert err.count("\n") == 1
    path.write_text("{")
    assert main(["infer", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "not JSON" in capsys.readouterr().err
