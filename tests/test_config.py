"""Configuration: valid configs load; missing files, inputs and branches give one clear line and
exit code 2 (malformed configurations: test_config_errors.py)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from conftest import DEFAULT_CONFIG, ROOT, default_config_dict, write_config

from diffana.cli import main
from diffana.config import load, load_dict
from diffana.exceptions import ConfigError


def test_default_config_is_valid():
    cfg = load(DEFAULT_CONFIG)
    assert [n for n, p in cfg.parameters.items() if p.trainable] == [
        "jet_pt_min", "btag_threshold", "lepton_pt_min"]
    assert cfg.regions["signal_region"].binning.edges[:3] == [0.0, 100.0, 200.0]


def test_missing_config_file(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "configuration file not found" in capsys.readouterr().err


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "diffana.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_missing_input_file_cli(tmp_path):
    data = default_config_dict()
    data["samples"]["wjets"]["files"] = [str(tmp_path / "missing.root")]
    path = write_config(tmp_path / "c.yaml", data)
    proc = run_cli("run", str(path), "--steps", "1", "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"diffana: error: {tmp_path / 'missing.root'}: input file not found"
    assert not (tmp_path / "run" / "results.json").exists()


def test_missing_branch_cli(tmp_path):
    data = default_config_dict()
    data["objects"]["jets"]["fields"]["btag"] = "Jet_btagDeepFlavB"
    path = write_config(tmp_path / "c.yaml", data)
    proc = run_cli("run", str(path), "--steps", "1", "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "branch 'Jet_btagDeepFlavB' not found" in last and "ttbar.root" in last
    assert "Jet_btagCSVV2" in last  # the similar branch it does have
    assert "Traceback" not in proc.stderr


def test_wrong_tree_name(tmp_path):
    from diffana.exceptions import DataError
    from diffana.io import read_branches

    with pytest.raises(DataError, match=r"no tree or RNTuple named 'tree'.*Events"):
        read_branches([ROOT / "tests" / "data" / "nano_tt_v12.root"], "tree", ["Jet_pt"])


def test_unreadable_file(tmp_path):
    from diffana.exceptions import DataError
    from diffana.io import read_branches

    bad = tmp_path / "bad.root"
    bad.write_bytes(b"not a root file at all" * 10)
    with pytest.raises(DataError, match="cannot be read as a ROOT file"):
        read_branches([bad], "Events", ["Jet_pt"])


def test_overrides_are_validated():
    data = copy.deepcopy(default_config_dict())
    data["optimiser"]["options"] = {"learning_rat": 0.1}
    with pytest.raises(ConfigError, match="optimiser.options.learning_rat: not an argument"):
        load_dict(data)
    from diffana.optimise import make_optimiser

    with pytest.raises(ConfigError, match="optimiser.options"):
        make_optimiser(data["optimiser"]["name"], data["optimiser"]["options"])


def test_imports_register_observables(tmp_path):
    (tmp_path / "my_observables.py").write_text(
        "from diffana.observe import register_observable\n"
        "@register_observable('n_jets_squared')\n"
        "def n2(ops, spec, weights, plan):\n"
        "    n = ops.sum(plan.collections[spec.collection].root, weights[spec.collection])\n"
        "    return n * n\n")
    data = default_config_dict()
    data["imports"] = ["my_observables.py"]
    data["observables"]["n2"] = {"kind": "n_jets_squared", "collection": "jets"}
    cfg = load(write_config(tmp_path / "c.yaml", data))
    assert cfg.observables["n2"].kind == "n_jets_squared"
    data["imports"] = ["no_such_module_xyz"]
    with pytest.raises(ConfigError, match=r"imports\[0\]: cannot import 'no_such_module_xyz'"):
        load(write_config(tmp_path / "d.yaml", data))


def test_observable_needs_its_keys(tmp_path):
    data = default_config_dict()
    data["observables"]["ht"] = {"kind": "sum", "collection": "jets"}
    with pytest.raises(ConfigError, match=r"observables\.ht\.field: observable kind 'sum' needs field"):
        load(write_config(tmp_path / "c.yaml", data))


def test_validate_checks_inputs(tmp_path, capsys):
    from conftest import DATA

    data = {
        "luminosity": 1.0,
        "samples": {"s": {"files": [str(DATA / "nano_tt_v12.root")], "cross_section": 1.0},
                    "b": {"files": [str(DATA / "nano_tt_v12.root")], "cross_section": 1.0}},
        "objects": {"jets": {"source": "Jet", "fields": {"btag": "Jet_btagCSVV2"}}},
        "observables": {"ht": {"kind": "sum", "collection": "jets", "field": "pt"},
                        "nb": {"kind": "sum", "collection": "jets", "field": "btag"}},
        "regions": {"SR": {"observable": "ht", "binning": {"bins": 2, "low": 0, "high": 100}}},
        "model": {"signal": ["s"]},
    }
    path = write_config(tmp_path / "c.yaml", data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nano_tt_v12.root: branch 'Jet_btagCSVV2' not found" in err
    assert "Jet_btagDeepFlavB" in err and "\n" not in err
    data["objects"]["jets"]["fields"]["btag"] = "Jet_btagDeepFlavB"
    assert main(["validate", str(write_config(path, data))]) == 0
    assert "2 input files checked" in capsys.readouterr().out
