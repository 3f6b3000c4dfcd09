"""Configurations that must be refused quickly, with one line: YAML that would hang or exhaust
the loader, values too large to print, numbers and types that validate but cannot run, and
the plugin code a configuration runs (``imports:``)."""

from __future__ import annotations

import hashlib
import json
import time

import awkward as ak
import numpy as np
import pytest
import yaml
from conftest import ROOT, default_config_dict, write_config

from diffana.analysis import Analysis
from diffana.checks import Origin, check_events
from diffana.cli import main
from diffana.config import imported_files, load, load_dict
from diffana.exceptions import ConfigError, DataError
from diffana.io import write_events
from diffana.plan import build

AGC_CONFIG = ROOT / "configs" / "agc_ttbar.yaml"


def refused(path, *fragments, seconds: float = 1.0) -> str:
    """``load(path)`` raises one line starting with the file and naming ``fragments``, within
    ``seconds``; ``diffana validate`` prints that line and exits 2."""
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load(path)
    assert time.perf_counter() - start < seconds
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def refused_cli(path, capsys, *fragments) -> None:
    message = refused(path, *fragments)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == f"diffana: error: {message}\n"


def yaml_text(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


# --- YAML that cannot hang or exhaust the loader ----------------------------------------------


def bomb(indent: str) -> str:
    """Nine levels of nine aliases: 81 aliases that stand for 9^9 values."""
    return "".join(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n"
                   for i in range(1, 10))


def test_alias_bomb_in_a_value(tmp_path, capsys):
    """Where the value is shown in the message (``description`` wants a string): before, a
    MemoryError after minutes, with the expanded structure's repr in it."""
    data = default_config_dict()
    del data["description"]
    path = tmp_path / "bomb.yaml"
    path.write_text('description:\n  l0: &l0 ["lol"]\n' + bomb("  ") + yaml_text(data))
    refused_cli(path, capsys, "YAML aliases here expand to more than 1,000,000 values")


def test_alias_bomb_in_optimiser_options(tmp_path, capsys):
    """Where any value is allowed (``optimiser.options``): before, ``validate`` passed and
    ``run`` hung."""
    data = default_config_dict()
    data["optimiser"]["options"] = {"learning_rate": 0.02, "b1": "BOMB"}
    text = yaml_text(data).replace("b1: BOMB", 'b1:\n    l0: &l0 ["lol"]\n' + bomb("    "))
    path = tmp_path / "options.yaml"
    path.write_text(text)
    assert "&l9" in text
    refused_cli(path, capsys, "more than 1,000,000 values")


def test_too_many_aliases(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("x: &d text\ny: [" + ", ".join(["*d"] * 101) + "]\n")
    refused(path, "more than 100 YAML aliases; expected at most 100 aliases")


def test_alias_cycle(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("name: &a [*a]\n")
    refused(path, "a YAML alias refers to a mapping or list that contains it")


@pytest.mark.parametrize("open_, close", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting(tmp_path, capsys, open_, close):
    """500 nested lists or mappings: one line, not a RecursionError."""
    path = tmp_path / "deep.yaml"
    path.write_text(yaml_text(default_config_dict()) + "x: " + open_ * 500 + close * 500 + "\n")
    refused_cli(path, capsys, "nested more than 64 deep; expected at most 64 levels of nesting")
    within = yaml_text(default_config_dict()).replace(  # options at level 3, then 60 lists
        "learning_rate: 0.02", "learning_rate: " + "[" * 60 + "0.02" + "]" * 60)
    path.write_text(within)
    assert load(path).optimiser.options["learning_rate"][0][0][0]


def test_file_too_large(tmp_path, capsys):
    path = tmp_path / "large.yaml"
    with open(path, "wb") as f:  # sparse: nothing written, nothing read
        f.truncate(10_000_001)
    refused_cli(path, capsys, "10,000,001 bytes; expected a configuration of at most 10,000,000")


def test_integer_too_long_to_read(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    text = yaml_text(default_config_dict())
    path.write_text(text.replace("luminosity: 3.0", "luminosity: " + "9" * 5000))
    assert "luminosity: 3.0" in text
    refused_cli(path, capsys, "'99999", "... cannot be read (Exceeds the limit (4300 digits)")


def test_huge_values_are_shortened(tmp_path):
    """A value in a message shows at most about 100 characters of it."""
    data = default_config_dict()
    data["regions"]["signal_region"]["binning"] = {"edges": list(range(10_000, 0, -1))}
    message = refused(write_config(tmp_path / "edges.yaml", data),
                      "edges must be strictly increasing, got [10000.0, 9999.0, ")
    assert len(message) < 300
    data = default_config_dict()
    data["regions"]["signal_region"]["observable"] = "x" * 100_000
    message = refused(write_config(tmp_path / "name.yaml", data), "'xxxx", "is not an observable")
    assert len(message) < 400
    data = default_config_dict()
    data["samples"]["y" * 100_000] = data["samples"]["ttbar"] | {"cross_section": -1}
    message = refused(write_config(tmp_path / "key.yaml", data), "cross_section")
    assert len(message) < 300


# --- numbers and types that validate but cannot run ------------------------------------------


@pytest.mark.parametrize("block,key", [("parameter", "bounds"), ("model", "poi_bounds")])
def test_bounds_need_a_finite_width(tmp_path, block, key):
    """``[-1e308, 1e308]``: each bound finite, their width not (a NaN run before)."""
    data = default_config_dict()
    where = data["parameters"]["jet_pt_min"] if block == "parameter" else data["model"]
    where[key] = [-1e308, 1e308]
    refused(write_config(tmp_path / "c.yaml", data), f".{key}:" if block == "parameter" else
            "model.poi_bounds:", "bounds [-1e+308, 1e+308] have a width hi - lo of inf; "
            "expected a finite width")


def test_nan_learning_rate(tmp_path):
    text = yaml_text(default_config_dict()).replace("learning_rate: 0.02", "learning_rate: .nan")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert ".nan" in text
    refused(path, "optimiser.options.learning_rate: nan is not a finite number")


def test_unknown_optimiser_option(tmp_path, capsys):
    data = default_config_dict()
    data["optimiser"]["options"]["no_such_option"] = 1
    refused_cli(write_config(tmp_path / "c.yaml", data), capsys,
                "optimiser.options.no_such_option: not an argument of optax.adam (value 1)",
                "allowed: learning_rate, b1, b2")


def test_optimiser_option_missing(tmp_path):
    data = default_config_dict()
    data["optimiser"] = {"name": "sgd", "options": {"momentum": 0.9}}
    refused(write_config(tmp_path / "c.yaml", data), "optimiser.options: optax.sgd needs "
            "learning_rate")


def test_optimiser_option_written_1e_minus_3_is_a_number(tmp_path):
    text = yaml_text(default_config_dict()).replace("learning_rate: 0.02", "learning_rate: 1e-3")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load(path).optimiser.options == {"learning_rate": 0.001}


def test_generate_more_events_than_memory(tmp_path, capsys):
    data = default_config_dict()
    data["generate"]["events"] = 10**14
    refused_cli(write_config(tmp_path / "c.yaml", data), capsys,
                "generate.events: 100000000000000 events need more than", "GB of memory")


# --- branches that do not hold numbers -------------------------------------------------------


def events(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3, n)
    k = int(counts.sum())
    return {"Jet": ak.unflatten(ak.zip({"pt": 20.0 + rng.exponential(40.0, k),
                                        "eta": rng.normal(0.0, 1.5, k)}), counts),
            "MET_pt": rng.exponential(40.0, n)}


def config(signal, background) -> dict:
    sample = {"cross_section": 1.0, "n_total": 1000}
    return {
        "luminosity": 1.0,
        "samples": {"s": sample | {"files": [str(signal)]},
                    "b": sample | {"files": [str(background)]}},
        "parameters": {"pt_min": {"value": 30.0, "bounds": [0.0, 100.0]}},
        "objects": {"jets": {"source": "Jet", "cuts": [{"field": "pt", "above": "pt_min"},
                                                       {"field": "eta", "abs": True,
                                                        "below": 2.4}]}},
        "observables": {"ht": {"kind": "sum", "collection": "jets", "field": "pt"},
                        "met": {"kind": "branch", "options": {"branch": "MET_pt"}}},
        "regions": {"SR": {"observable": "ht", "binning": {"bins": 4, "low": 0, "high": 400}},
                    "MET": {"observable": "met", "binning": {"bins": 4, "low": 0, "high": 200}}},
        "model": {"signal": ["s"]},
    }


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_events(tmp_path_factory.mktemp("good") / "b.root", events(200, 1))


def test_boolean_branch(tmp_path, good):
    ev = events(200, 2)
    ev["Jet"] = ak.zip({"pt": ev["Jet"].pt > 40.0, "eta": ev["Jet"].eta})
    bad = write_events(tmp_path / "bool.root", ev)
    with pytest.raises(DataError) as err:
        Analysis(load_dict(config(bad, good)), progress=False)
    assert str(err.value) == (f"{bad}: branch 'Jet_pt' of tree 'Events' is var * bool; expected "
                              "numbers (a flat or jagged array of numbers)")


def test_string_branch(tmp_path, good):
    ev = events(200, 3)
    ev["MET_pt"] = ak.Array([f"{x:.1f}" for x in ev["MET_pt"]])
    bad = write_events(tmp_path / "string.root", ev, rntuple=True)  # TTrees hold no strings
    with pytest.raises(DataError) as err:
        Analysis(load_dict(config(good, bad)), progress=False)
    assert str(err.value) == (f"{bad}: branch 'MET_pt' of tree 'Events' is string; expected "
                              "numbers (a flat or jagged array of numbers)")


def test_boolean_flag_compared_with_equals_is_read():
    """``Muon_tightId`` is a boolean in NanoAOD: an ``equals`` cut on it is fine."""
    data = config("s.root", "b.root")
    data["objects"]["muons"] = {"source": "Muon", "cuts": [{"field": "tightId", "equals": True}]}
    plan = build(load_dict(data))
    chunk = ak.Array({"Jet_pt": [[40.0], []], "Jet_eta": [[0.1], []], "MET_pt": [1.0, 2.0],
                      "Muon_tightId": [[True, False], [True]]})
    origin = Origin(["s.root"], "Events", np.zeros(2, int), np.arange(2))
    kept, keep, _ = check_events(chunk, plan, plan.branches, "stop", origin)
    assert keep is None and len(kept) == 2
    with pytest.raises(DataError, match="'Muon_tightId' of tree 'Events' is var"):
        check_events(ak.with_field(chunk, [["a", "b"], ["c"]], "Muon_tightId"), plan,
                     plan.branches, "stop", origin)


# --- plugins: imports ------------------------------------------------------------------------


PLUGIN = '''
from pathlib import Path
from diffana.observe import register_observable
Path(__file__).with_name("ran").write_text("the plugin ran")

@register_observable("limits_test_kind", requires=("collection",))
def limits_test_kind(ops, spec, weights, plan):
    return ops.sum(plan.collections[spec.collection].root, weights[spec.collection])
'''


def with_plugin(tmp_path, good) -> dict:
    (tmp_path / "plugin.py").write_text(PLUGIN)
    data = config(good, good)
    data["imports"] = ["plugin.py"]
    data["observables"]["njets"] = {"kind": "limits_test_kind", "collection": "jets"}
    data["regions"]["N"] = {"observable": "njets", "binning": {"bins": 3, "low": 0, "high": 6}}
    return data


def test_imported_files_are_hashed(tmp_path, good):
    data = with_plugin(tmp_path, good)
    data["imports"].append("diffana.observe")
    cfg = load_dict(data, source="c.yaml", imports=False)
    digest = hashlib.sha256((tmp_path / "plugin.py").read_bytes()).hexdigest()
    assert imported_files(cfg, tmp_path) == {
        "plugin.py": digest,
        "diffana.observe": hashlib.sha256((ROOT / "diffana" / "observe.py").read_bytes())
        .hexdigest()}


def test_results_record_imports(tmp_path, good):
    path = write_config(tmp_path / "c.yaml", with_plugin(tmp_path, good) | {"inference": False})
    out = tmp_path / "run"
    assert main(["run", str(path), "--steps", "1", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["imports"] == {
        "plugin.py": hashlib.sha256((tmp_path / "plugin.py").read_bytes()).hexdigest()}


def test_validate_no_imports_runs_no_plugin(tmp_path, good, capsys):
    path = write_config(tmp_path / "c.yaml", with_plugin(tmp_path, good))
    assert main(["validate", "--no-imports", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"{path}: valid (2 samples, 3 regions, 1 trainable parameter, 2 input files checked; "
        "1 observable kind unchecked (from imports: limits_test_kind))\n")
    assert not (tmp_path / "ran").exists()
    assert main(["validate", str(path)]) == 0
    assert "unchecked" not in capsys.readouterr().out and (tmp_path / "ran").exists()


def test_validate_no_imports_agc(capsys):
    """The AGC configuration: its plugin observable and generator are named unchecked."""
    assert main(["validate", "--no-imports", str(AGC_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert out == (f"{AGC_CONFIG}: valid (9 samples, 2 regions, 3 trainable parameters, 0 input "
                   "files checked; 1 observable kind unchecked (from imports: trijet_mass); "
                   "generator 'agc' and its files unchecked (from imports))\n")


def test_validate_no_imports_still_checks_the_rest(tmp_path, good, capsys):
    """Without imports an unknown kind is an error, with --no-imports too; with imports, a
    missing branch of a built-in observable is still found."""
    data = config(good, good)
    data["observables"]["ht"]["kind"] = "summ"
    path = write_config(tmp_path / "c.yaml", data)
    assert main(["validate", "--no-imports", str(path)]) == 2
    assert "observables.ht.kind: unknown observable kind 'summ'" in capsys.readouterr().err
    data = with_plugin(tmp_path, good)
    data["observables"]["met"]["options"]["branch"] = "MET_ptt"
    path = write_config(tmp_path / "c.yaml", data)
    assert main(["validate", "--no-imports", str(path)]) == 2
    assert "'MET_ptt' not found" in capsys.readouterr().err
