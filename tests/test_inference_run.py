"""The inference of a run and of ``diffana fit`` (``inference.json`` of the final hard-cut
workspace), its switches, and the model's ``interpolation:`` used everywhere."""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pyhf
import pytest
from conftest import default_config_dict, error_line, write_config
from test_inference import KEYS

from diffana import cli, outputs
from diffana.config import INTERPOLATION_CODES, Interpolation, load_dict
from diffana.exceptions import ConfigError, DiffanaError
from diffana.figure_process import MODE
from diffana.plot_inference import FIGURES
from diffana.run import run
from diffana.stats.modifiers import MODIFIERS
from diffana.stats.objective import Objective, value
from diffana.stats.spec import build, to_json


@pytest.fixture(scope="module")
def inference_run(tmp_path_factory):
    """A run of the default analysis (5000 events, 1 step) with its inference, its figures
    drawn in figure processes as by default: ``(run directory, results, printed summary)``."""
    folder = tmp_path_factory.mktemp("inference-run")
    data = default_config_dict(5_000)
    del data["inference"]  # the default: on
    printed: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODE, "process")
        results = run(write_config(folder / "small.yaml", data), steps=1, out=folder / "run",
                      progress=False, echo=printed.append)
    return folder / "run", results, "\n".join(printed)


def test_run_writes_inference_json_and_figures(inference_run):
    out, results, printed = inference_run
    written = json.loads((out / "inference.json").read_text())
    assert list(written) == KEYS and written["poi"] == "mu"
    assert results["inference"]["file"] == "inference.json"
    assert results["inference"]["workspace"] == outputs.HARD_WORKSPACE
    assert results["inference"]["upper_limit"] == written["upper_limit"]
    assert results["inference"]["significance"] == written["significance"]
    assert results["timings"]["inference_s"] > 0
    for figure in FIGURES:
        assert (out / f"{figure}.png").is_file() and (out / f"{figure}.pdf").is_file(), figure
    manifest = json.loads((out / ".diffana-run.json").read_text())["files"]
    assert {"inference.json", outputs.HARD_WORKSPACE, "cls_scan.png"} <= set(manifest)
    assert "upper limit on mu (95% CL): observed" in printed
    assert "significance: observed" in printed


def test_run_inference_equals_diffana_infer_on_its_workspace(inference_run, tmp_path):
    """``diffana infer`` on the run's hard-cut workspace gives the same numbers, bit for
    bit; that workspace holds the hard-cut yields the run's hard objective is of."""
    out, results, _ = inference_run
    assert cli.main(["infer", str(out / outputs.HARD_WORKSPACE), "--out", str(tmp_path),
                     "--no-plots", "--quiet"]) == 0
    assert (json.loads((tmp_path / "inference.json").read_text())
            == json.loads((out / "inference.json").read_text()))
    # the run's objective: the median discovery significance of the hard-cut yields
    assert results["hard"]["objective_final"] == pytest.approx(
        results["inference"]["significance"]["expected"], rel=1e-6)


def test_no_inference_switch(monkeypatch):
    seen = {}
    monkeypatch.setattr("diffana.run.run", lambda *a, **k: seen.update(k))
    cli.main(["run", "configs/ttbar_vs_wjets.yaml", "--no-inference"])
    assert seen["inference"] is False
    cli.main(["run", "configs/ttbar_vs_wjets.yaml"])
    assert seen["inference"] is None
    monkeypatch.setattr("diffana.histfit.fit_histograms", lambda *a, **k: seen.update(k))
    cli.main(["fit", "configs/agc_ttbar.yaml", "--histograms", "h.json", "--no-inference"])
    assert seen["inference"] is False


def test_inference_warnings_reach_the_run(tmp_path, caplog):
    """Each warning of the inference is a warning of the run: in ``results.json`` and
    logged; an inference that fails leaves the run's own results standing, with a warning."""
    data = default_config_dict(5_000)
    data["inference"] = {"plots": False}
    ana = SimpleNamespace(cfg=load_dict(data), phases=SimpleNamespace(seconds={}))
    result = {"poi": "mu", "bestfit": {"mu": {"value": 1.0, "error": 0.5}},
              "upper_limit": {"level": 0.05, "observed": 2.0, "expected": [1, 1, 1, 1, 1]},
              "significance": {"observed": None, "expected": None},
              "warnings": ["the fit with mu = 0 did not converge"]}
    future: Future = Future()
    future.set_result((result, {}, 1.5))
    figures = outputs.Drawing(None)  # draws nothing: plots: false
    figures.inference = future
    results = {"warnings": []}
    with caplog.at_level(logging.WARNING, logger="diffana"):
        outputs.add_inference(results, ana, tmp_path, figures)
    assert results["warnings"] == [{"code": "inference", "where": "inference.json",
                                    "message": "the fit with mu = 0 did not converge"}]
    assert "did not converge" in caplog.text
    assert results["inference"]["seconds"] == 1.5 and ana.phases.seconds["inference_s"] == 1.5

    failed: Future = Future()
    failed.set_exception(DiffanaError("no parameter of interest"))
    figures.inference = failed
    results = {"warnings": []}
    outputs.add_inference(results, ana, tmp_path, figures)
    assert results["inference"] is None
    assert results["warnings"][0]["code"] == "inference-failed"


# --- interpolation: -------------------------------------------------------------------------


def test_interpolation_codes_are_those_of_the_model():
    """The schema's codes are the ones :mod:`diffana.stats.modifiers` implements, pyhf's
    default first."""
    for m_type, codes in INTERPOLATION_CODES.items():
        assert set(codes) == set(MODIFIERS[m_type].interpolations)
        assert MODIFIERS[m_type].settings == {"interpcode": codes[0]}
    assert Interpolation().codes() == {"normsys": "code4", "histosys": "code4p"}


def _yields(cfg) -> dict:
    """Random yields, the signal a tenth of the background: the fit at POI = 0 pulls the
    normsys to within ±1, where code1 and code4 differ."""
    rng = np.random.default_rng(3)
    return {r: {s: {"nominal": rng.uniform(5.0, 50.0, len(reg.binning.edges) - 1)
                    * (0.1 if s in cfg.model.signal else 1.0),
                    "sumw2": rng.uniform(0.5, 4.0, len(reg.binning.edges) - 1)}
                for s in cfg.nominal_samples} for r, reg in cfg.regions.items()}


def test_code1_objective_equals_pyhf():
    """``model.interpolation: {normsys: code1}``: the objective's likelihood is pyhf's with
    ``modifier_settings`` (so is the Asimov discovery significance), and differs from
    ``code4``'s."""
    data = default_config_dict(5_000)
    data["model"]["systematics"] = [{"name": "wjets_norm", "type": "normsys",
                                     "samples": ["wjets"], "up": 1.4, "down": 0.8}]
    numbers = {}
    for code in ("code1", "code4"):
        data["model"]["interpolation"] = {"normsys": code}
        cfg = load_dict(data, source=code)
        objective = Objective.of(cfg, cfg.nominal_samples)
        yields = _yields(cfg)
        numbers[code] = float(value(objective, yields))
        settings = {"normsys": {"interpcode": code}, "histosys": {"interpcode": "code4p"}}
        model = pyhf.Workspace(to_json(build(cfg, yields))).model(modifier_settings=settings)
        asimov = model.expected_data(model.config.suggested_init())
        pars = np.array([0.4, -0.6])
        assert float(objective.model.logpdf(pars, asimov, objective.model.templates(
            build(cfg, yields)))) == pytest.approx(float(model.logpdf(pars, asimov)[0]),
                                                   rel=1e-12)
        free = pyhf.infer.mle.fit(asimov, model, return_fitted_val=True)[1]
        at_zero, twice_nll = pyhf.infer.mle.fixed_poi_fit(0.0, asimov, model,
                                                          return_fitted_val=True)
        assert -1.0 < at_zero[1] < 0.0 or 0.0 < at_zero[1] < 1.0
        assert numbers[code] == pytest.approx(float(np.sqrt(twice_nll - free)), rel=1e-6), code
    assert abs(numbers["code1"] - numbers["code4"]) > 1e-4 * numbers["code4"]


@pytest.mark.parametrize(("change", "where"), [
    ({"model": {"interpolation": {"normsys": "code2"}}}, "model.interpolation.normsys"),
    ({"model": {"interpolation": {"shapesys": "code1"}}}, "model.interpolation.shapesys"),
    ({"inference": {"poi_value": 20}}, "inference.poi_value"),
    ({"inference": {"level": 1.5}}, "inference.level"),
    ({"inference": "yes"}, "inference"),
])
def test_bad_settings_are_one_line(change, where, tmp_path, capsys):
    data = default_config_dict(5_000)
    for key, update in change.items():
        data[key] = {**data[key], **update} if isinstance(update, dict) else update
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError, match=rf"^{path}: {where}: "):
        load_dict(data, source=str(path))
    assert cli.main(["validate", str(path)]) == 2
    assert error_line(capsys.readouterr().err).startswith(f"diffana: error: {path}: {where}: ")


def test_inference_false_is_short_for_disabled():
    data = default_config_dict(5_000)
    data["inference"] = False
    assert load_dict(data).inference.enabled is False
    del data["inference"]
    cfg = load_dict(data)
    assert cfg.inference.enabled and cfg.inference.level == 0.05
    assert outputs.with_inference(cfg, False).inference.enabled is False
    assert outputs.with_inference(cfg, None) is cfg
