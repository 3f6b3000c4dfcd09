"""``diffana fit``: the AGC model built from the AGC reference histograms, against the AGC's
numbers, pyhf, and cabinetry's NormPlusShape rule; bad input gives one line and exit code 2."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import jax
import numpy as np
import pyhf
import pytest
import yaml
from conftest import DATA, ROOT, write_config

from diffana.cli import main
from diffana.config import load, load_dict
from diffana.exceptions import ConfigError, DataError
from diffana.histfit import (
    Histogram,
    agc_n_total,
    build_workspace,
    event_weights,
    fit_workspace,
    rebin,
    summary,
)
from diffana.stats import Model
from diffana.stats import spec as specmod

AGC = DATA / "agc"
CONFIG = ROOT / "configs" / "agc_ttbar.yaml"
INPUTS = AGC / "nanoaod_inputs.json"
# The AGC's fit of its reference histograms (exact MLE, inverse-Hessian uncertainty) and pyhf's
# logpdf at the suggested initial parameters on pseudodata + auxdata.
REFERENCE = {
    5: {"ttbar_norm": 0.9533, "uncertainty": 0.0919, "logpdf": -197.32193, "twice_nll": 109.65094},
    1: {"ttbar_norm": 0.9608, "uncertainty": 0.1082, "logpdf": -255.64669},
}


def histos(n: int):
    return AGC / f"histos_{n}_file_per_process.json"


@pytest.fixture(scope="module")
def cfg():
    return load(CONFIG)


@pytest.fixture(scope="module")
def workspaces(cfg):
    return {n: build_workspace(cfg, histos(n), n_total=agc_n_total(INPUTS, n)) for n in (1, 5)}


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory):
    """``diffana fit`` on the 5-files-per-process histograms: (rc, out dir, printed text)."""
    out = tmp_path_factory.mktemp("agc-fit")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["fit", str(CONFIG), "--histograms", str(histos(5)), "--out", str(out),
                   "--nanoaod-inputs", str(INPUTS), "--files-per-process", "5"])
    return rc, out, printed.getvalue()


def test_n_total_and_weights_match_the_reference_histograms(cfg):
    """w = σ·L/N_total makes every nominal bin content an integer number of events."""
    for n in (1, 5):
        weights = event_weights(cfg, agc_n_total(INPUTS, n))
        assert set(weights) == set(cfg.nominal_samples)
        content = json.loads(histos(n).read_text())
        for sample, w in weights.items():
            events = np.concatenate([content[f"{r}_{sample}"]["contents"] for r in cfg.regions]) / w
            np.testing.assert_allclose(events, np.round(events), atol=1e-6 * max(1, events.max()))
    assert agc_n_total(INPUTS, 5)["single_top_tW"] == 1999400  # only 3 files exist


def test_cli_fit_reproduces_the_agc_reference(cli_fit):
    rc, out, printed = cli_fit
    assert rc == 0
    result = json.loads((out / "fit.json").read_text())
    assert result["poi"] == "ttbar_norm"
    poi = result["parameters"]["ttbar_norm"]
    assert poi["bestfit"] == pytest.approx(REFERENCE[5]["ttbar_norm"], abs=0.002)
    assert poi["uncertainty"] == pytest.approx(REFERENCE[5]["uncertainty"], rel=0.01)
    assert result["twice_nll"] == pytest.approx(REFERENCE[5]["twice_nll"], abs=2e-5)
    assert set(result["parameters"]["jet_energy_scale"]) == {"bestfit", "uncertainty"}
    assert len(result["parameters"]) == 1 + 11 + 2 * 11  # POI, NPs, staterror per bin
    assert (out / "pulls.png").stat().st_size > 10_000
    # One table: POI ± uncertainty first, then every nuisance parameter.
    lines = printed.splitlines()
    assert "ttbar_norm = 0.9533 ± 0.0919" in lines[0]
    assert lines[3].split()[:3] == ["ttbar_norm", "0.9533", "0.0919"]
    assert any(line.startswith("btag_np_4") for line in lines)


def test_cli_fit_writes_inference(cli_fit, tmp_path):
    """``diffana fit`` writes ``inference.json`` and its figures for its workspace (as
    ``diffana infer``), quotes it in ``fit.json`` and prints two lines of it;
    ``--no-inference``: none."""
    _, out, printed = cli_fit
    written = json.loads((out / "inference.json").read_text())
    assert written["poi"] == "ttbar_norm" and written["warnings"] == []
    fit = json.loads((out / "fit.json").read_text())
    assert fit["inference"]["upper_limit"] == written["upper_limit"]
    assert written["bestfit"]["ttbar_norm"]["value"] == pytest.approx(
        fit["parameters"]["ttbar_norm"]["bestfit"], abs=1e-6)
    assert (out / "ranking.png").is_file() and (out / "cls_scan.pdf").is_file()
    assert "upper limit on ttbar_norm (95% CL): observed" in printed
    assert main(["fit", str(CONFIG), "--histograms", str(histos(5)), "--out", str(tmp_path),
                 "--nanoaod-inputs", str(INPUTS), "--files-per-process", "5",
                 "--no-inference", "--quiet"]) == 0
    assert json.loads((tmp_path / "fit.json").read_text())["inference"] is None
    assert not (tmp_path / "inference.json").exists()


def test_workspace_is_valid_and_pyhf_finds_the_same_minimum(cli_fit):
    _, out, _ = cli_fit
    ws = json.loads((out / "workspace.json").read_text())
    pyhf.schema.validate(ws, "workspace.json")
    workspace = pyhf.Workspace(ws)
    model = workspace.model()
    data = workspace.data(model)
    pyhf.set_backend("numpy")
    # SciPy's SLSQP stops at its default tolerance 1e-5 on the objective, and where it
    # stops depends on the machine's floating-point code paths: ask for more.
    bestfit, twice_nll = pyhf.infer.mle.fit(data, model, return_fitted_val=True,
                                            tolerance=1e-10)
    ours = json.loads((out / "fit.json").read_text())
    ours_vec = np.array([ours["parameters"][n]["bestfit"] for n in model.config.par_names])
    assert bestfit[model.config.poi_index] == pytest.approx(
        ours["parameters"]["ttbar_norm"]["bestfit"], abs=1e-3)
    np.testing.assert_allclose(bestfit, ours_vec, atol=5e-3)
    # diffana's fit is the exact minimum: pyhf (scipy) does not get below it.
    assert float(twice_nll) >= ours["twice_nll"] - 1e-7
    assert float(twice_nll) == pytest.approx(ours["twice_nll"], abs=1e-5)


def test_fit_one_file_per_process(workspaces):
    result = fit_workspace(workspaces[1])
    assert result.converged
    i = result.names.index("ttbar_norm")
    assert result.bestfit[i] == pytest.approx(REFERENCE[1]["ttbar_norm"], abs=0.002)
    assert result.uncertainty[i] == pytest.approx(REFERENCE[1]["uncertainty"], rel=0.01)
    assert summary(result).splitlines()[3].startswith("ttbar_norm")


@pytest.mark.parametrize("n", [5, 1])
def test_logpdf_at_suggested_init(workspaces, n):
    ws = workspaces[n]
    model = Model(ws)
    pyhf_model = pyhf.Workspace(ws).model()
    data = pyhf.Workspace(ws).data(pyhf_model)
    init = pyhf_model.config.suggested_init()
    ours = float(jax.jit(model.logpdf)(np.asarray(init), data, model.templates()))
    assert ours == pytest.approx(REFERENCE[n]["logpdf"], abs=2e-5)
    assert ours == pytest.approx(float(pyhf_model.logpdf(init, data)[0]), rel=1e-10)


def test_model_follows_the_cabinetry_config(cfg, workspaces):
    """NormPlusShape split and symmetrisation as cabinetry builds them, lumi ±3 %, staterror
    sqrt(w·Σw), observations from pseudodata, all on the AGC rebinning."""
    ws = workspaces[5]
    content = json.loads(histos(5).read_text())

    def rebinned(key):  # 110-550 GeV, pairs of 20 GeV bins merged; flow bins dropped
        return np.asarray(content[key]["contents"][1:-1])[3:].reshape(11, 2).sum(axis=1)

    channels = {c["name"]: {s["name"]: s for s in c["samples"]} for c in ws["channels"]}
    assert set(channels) == {"4j1b", "4j2b"}
    ttbar = channels["4j2b"]["ttbar"]
    mods = {(m["name"], m["type"]): m["data"] for m in ttbar["modifiers"]}
    nominal = rebinned("4j2b_ttbar")
    np.testing.assert_allclose(ttbar["data"], nominal, rtol=1e-12)

    up = rebinned("4j2b_ttbar_pt_scale_up")  # symmetrised
    norm = up.sum() / nominal.sum()
    assert mods["jet_energy_scale", "normsys"] == pytest.approx({"hi": norm, "lo": 2 - norm})
    hist = mods["jet_energy_scale", "histosys"]
    np.testing.assert_allclose(hist["hi_data"], up / norm, rtol=1e-12)
    np.testing.assert_allclose(hist["lo_data"], 2 * nominal - up / norm, rtol=1e-12)

    up, down = rebinned("4j2b_ttbar_btag_var_1_up"), rebinned("4j2b_ttbar_btag_var_1_down")
    hi, lo = up.sum() / nominal.sum(), down.sum() / nominal.sum()
    assert mods["btag_np_2", "normsys"] == pytest.approx({"hi": hi, "lo": lo})
    np.testing.assert_allclose(mods["btag_np_2", "histosys"]["lo_data"], down / lo, rtol=1e-12)

    assert mods["luminosity", "normsys"] == {"hi": 1.03, "lo": 0.97}
    w = 729.84 * 3378.0 / agc_n_total(INPUTS, 5)["ttbar"]
    np.testing.assert_allclose(mods["staterror_4j2b", "staterror"], np.sqrt(w * nominal))
    assert ("ttbar_norm", "normfactor") in mods and len(mods) == 1 + 1 + 1 + 2 * 9

    wjets = {(m["name"], m["type"]) for m in channels["4j1b"]["wjets"]["modifiers"]}
    assert {n for n, _ in wjets} == {"staterror_4j1b", "luminosity", "jet_energy_scale",
                                     "jet_energy_resolution", "btag_np_1", "btag_np_2",
                                     "btag_np_3", "btag_np_4", "wjets_scale"}
    observations = {o["name"]: o["data"] for o in ws["observations"]}
    np.testing.assert_allclose(observations["4j1b"], rebinned("4j1b_pseudodata"))
    config = ws["measurements"][0]["config"]
    assert config["poi"] == "ttbar_norm"
    assert config["parameters"][0] == {"name": "ttbar_norm", "bounds": [[0.0, 10.0]],
                                       "inits": [1.0]}


def test_norm_plus_shape_single_bin_has_no_histosys():
    cfg = load_dict({
        "luminosity": 1.0,
        "samples": {"sig": {"files": ["s.root"], "cross_section": 1.0},
                    "bkg": {"files": ["b.root"], "cross_section": 1.0}},
        "objects": {"jets": {"source": "Jet"}},
        "observables": {"ht": {"kind": "sum", "collection": "jets", "field": "pt"}},
        "regions": {"SR": {"observable": "ht", "binning": {"edges": [0, 1]}}},
        "model": {"signal": ["sig"], "poi_bounds": [-1, 5], "systematics": [
            {"name": "jes", "type": "normplusshape", "up": "jes_up", "symmetrise": True}]},
    })
    one = {"nominal": np.array([10.0])}
    yields = {"SR": {"sig": one, "bkg": one, "sig_jes_up": {"nominal": np.array([11.0])},
                     "bkg_jes_up": {"nominal": np.array([9.0])}}}
    spec = specmod.to_json(specmod.build(cfg, yields))
    for sample, hi in (("sig", 1.1), ("bkg", 0.9)):
        mods = next(s for s in spec["channels"][0]["samples"] if s["name"] == sample)["modifiers"]
        jes = [m for m in mods if m["name"] == "jes"]
        assert [m["type"] for m in jes] == ["normsys"]
        assert jes[0]["data"] == pytest.approx({"hi": hi, "lo": 2 - hi})
    assert spec["measurements"][0]["config"]["parameters"][0]["bounds"] == [[-1.0, 5.0]]
    del yields["SR"]["bkg_jes_up"]
    with pytest.raises(DataError, match="no template 'bkg_jes_up' for systematic 'jes'"):
        specmod.build(cfg, yields)


def test_rebin_merges_bins_and_checks_edges():
    h = Histogram(np.arange(0.0, 60.0, 10.0), np.arange(1.0, 6.0), np.arange(1.0, 6.0) * 2)
    out = rebin(h, [10.0, 30.0, 50.0], "here")
    np.testing.assert_array_equal(out.values, [2 + 3, 4 + 5])
    np.testing.assert_array_equal(out.variances, [10, 18])
    with pytest.raises(DataError, match="binning edge 25 is not an edge of the input histogram"):
        rebin(h, [10.0, 25.0, 50.0], "here")


def test_root_histograms_give_the_same_workspace(cfg, workspaces, tmp_path):
    """A ROOT file of the same histograms; without N_total its Σw² are the variances."""
    import hist
    import uproot

    content = json.loads(histos(5).read_text())
    weights = event_weights(cfg, agc_n_total(INPUTS, 5))
    path = tmp_path / "histograms.root"
    with uproot.recreate(path) as f:
        for key, entry in content.items():
            h = hist.Hist(hist.axis.Variable(entry["edges"]), storage=hist.storage.Weight())
            values = np.asarray(entry["contents"])
            sample = next((s for s in weights if key.endswith(f"_{s}")), None)
            h.view(flow=True)["value"] = values
            h.view(flow=True)["variance"] = values * weights[sample] if sample else values
            f[key] = h
    ws = build_workspace(cfg, path)
    expected = workspaces[5]
    assert Model(ws).par_names == Model(expected).par_names
    staterror = [Model(w).templates()["4j2b"]["wjets"]["staterror"]["staterror_4j2b"]
                 for w in (ws, expected)]
    np.testing.assert_allclose(*staterror, rtol=1e-12)
    flat = lambda w: np.concatenate([np.ravel(x) for x in _numbers(w)])  # noqa: E731
    np.testing.assert_allclose(flat(ws), flat(expected), rtol=1e-12)


def _numbers(obj):
    if isinstance(obj, dict):
        for k in sorted(obj):
            yield from _numbers(obj[k])
    elif isinstance(obj, list) and obj and isinstance(obj[0], (int, float)):
        yield np.asarray(obj, dtype=float)
    elif isinstance(obj, list):
        for x in obj:
            yield from _numbers(x)
    elif isinstance(obj, float):
        yield np.asarray([obj])


def _agc_dict() -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    data["imports"] = [str(ROOT / "analyses" / "agc_ttbar" / "observables.py")]
    return data


def _without(key: str, tmp_path):
    content = json.loads(histos(1).read_text())
    del content[key]
    path = tmp_path / "histos.json"
    path.write_text(json.dumps(content))
    return path


def _shifted_edges_config(tmp_path):
    data = _agc_dict()
    data["regions"]["4j2b"]["binning"]["edges"][0] = 115
    return write_config(tmp_path / "agc.yaml", data)


AGC_OPTS = ["--nanoaod-inputs", str(INPUTS), "--files-per-process", "1"]
BAD = {
    "missing histogram": (lambda t: (CONFIG, _without("4j2b_wjets_scale_var_up", t), AGC_OPTS),
                          ["histos.json", "histogram '4j2b_wjets_scale_var_up' not found"]),
    "not json": (lambda t: (CONFIG, _write(t / "h.json", "{edges: oops"), AGC_OPTS),
                 ["h.json", "not valid JSON (line 1"]),
    "bad root": (lambda t: (CONFIG, _write(t / "h.root", "root" + "x" * 100), AGC_OPTS),
                 ["h.root", "cannot read as a ROOT file"]),
    "no file": (lambda t: (CONFIG, t / "nothing.json", AGC_OPTS),
                ["nothing.json", "histogram file not found"]),
    "edges mismatch": (lambda t: (_shifted_edges_config(t), histos(1), AGC_OPTS),
                       ["4j2b_ttbar: regions.4j2b.binning", "binning edge 115 is not an edge",
                        "[50, 70, 90, ..., 530, 550] (25 bins)"]),
    "no n_total": (lambda t: (CONFIG, histos(1), []),
                   ["4j1b_ttbar: no variances in the file and no N_total", "--n-total ttbar=N"]),
    "bad --n-total": (lambda t: (CONFIG, histos(1), ["--n-total", "ttbar:5"]),
                      ["--n-total: expected SAMPLE=N", "'ttbar:5'"]),
    "inputs alone": (lambda t: (CONFIG, histos(1), ["--nanoaod-inputs", str(INPUTS)]),
                     ["--nanoaod-inputs and --files-per-process go together"]),
}


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2(case, tmp_path, capsys):
    make, fragments = BAD[case]
    config, histograms, opts = make(tmp_path)
    rc = main(["fit", str(config), "--histograms", str(histograms), "--out", str(tmp_path / "o"),
               *opts])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("diffana: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err
    assert not (tmp_path / "o" / "fit.json").exists()


def test_bad_input_from_the_console_has_no_traceback(tmp_path):
    histograms = _without("4j1b_ttbar_ME_var", tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "diffana.cli", "fit", str(CONFIG), "--histograms",
         str(histograms), *AGC_OPTS], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "histos.json: histogram '4j1b_ttbar_ME_var' not found; similar: [" in proc.stderr
    assert "'4j2b_ttbar_ME_var'" in proc.stderr


@pytest.mark.parametrize("systematic,fragments", [
    ({"name": "x", "type": "normplusshape", "up": "ME_var"},
     ["model.systematics[0]", "exactly one of down (a variation) and symmetrise: true"]),
    ({"name": "x", "type": "normplusshape", "up": 1.1, "down": 0.9},
     ["model.systematics[0]", "needs up (and down) naming variations"]),
    ({"name": "x", "type": "normsys", "samples": ["ttbar"], "up": "ME_var", "down": 0.9},
     ["model.systematics[0]", "a normsys needs numbers for up and down"]),
    ({"name": "x", "type": "normplusshape", "up": "ME_var", "symmetrise": True, "samples": ["tt"]},
     ["model.systematics[0].samples[0]", "'tt' is not a nominal sample"]),
])
def test_normplusshape_config_errors(systematic, fragments):
    data = _agc_dict()
    data["model"]["systematics"][0] = systematic
    with pytest.raises(ConfigError) as err:
        load_dict(data, "agc.yaml")
    for fragment in fragments:
        assert fragment in str(err.value)
