"""Malformed configurations: each gives one line naming the file, the key path, the value and
what is allowed; ``diffana validate`` exits with 2 and prints no traceback."""

from __future__ import annotations

import pytest
from conftest import DEFAULT_CONFIG, default_config_dict, write_config

from diffana.cli import main
from diffana.config import load
from diffana.exceptions import ConfigError


def mutate(path_keys, value):
    """The default configuration with the value at ``path_keys`` set (``KeyError``: deleted)."""
    data = default_config_dict()
    node = data
    for k in path_keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path_keys[-1]]
    else:
        node[path_keys[-1]] = value
    return data


def case(id, data, *fragments):
    return pytest.param(data, fragments, id=id)


DEFAULT_TEXT = DEFAULT_CONFIG.read_text()

CASES = [
    # unknown keys, at every level: the key path, the value and the keys allowed there
    case("unknown-top", mutate(["colour"], "red"),
         "colour: unknown key", "'red'", "allowed: name, description, imports"),
    case("unknown-sample", mutate(["samples", "ttbar", "cross_sectoin"], 1.0),
         "samples.ttbar.cross_sectoin: unknown key", "1.0", "did you mean 'cross_section'?",
         "allowed: files, tree, cross_section"),
    case("unknown-parameter", mutate(["parameters", "jet_pt_min", "initial"], 30.0),
         "parameters.jet_pt_min.initial: unknown key", "30.0", "allowed: value, bounds"),
    case("unknown-cut", mutate(["objects", "jets", "cuts", 0, "greater"], 30),
         "objects.jets.cuts[0].greater: unknown key", "30", "allowed: field, above, below"),
    case("unknown-requirement", mutate(["selection", 0, "atleast"], 4),
         "selection[0].atleast: unknown key", "(value 4)", "did you mean 'at_least'?"),
    case("unknown-binning", mutate(["regions", "signal_region", "binning", "nbins"], 15),
         "regions.signal_region.binning.nbins: unknown key", "15",
         "allowed: edges, bins, low, high"),
    case("unknown-systematic", mutate(["model", "systematics", 0, "kind"], "normsys"),
         "model.systematics[0].kind: unknown key", "'normsys'", "allowed: name, type, samples"),
    case("unknown-optimiser", mutate(["optimiser", "stepz"], 3),
         "optimiser.stepz: unknown key", "(value 3)", "allowed: name, options, steps"),
    case("unknown-generate", mutate(["generate", "n"], 10),
         "generate.n: unknown key", "(value 10)", "allowed: kind, events, seed"),
    # wrong types
    case("string-for-number", mutate(["parameters", "jet_pt_min", "value"], "thirty"),
         "parameters.jet_pt_min.value:", "'thirty'", "valid number"),
    case("float-for-integer", mutate(["optimiser", "steps"], 2.5),
         "optimiser.steps:", "2.5", "valid integer"),
    case("boolean-for-number", mutate(["luminosity"], True),
         "luminosity:", "True", "finite number, not true/false"),
    case("nan-for-number", mutate(["samples", "wjets", "cross_section"], float("nan")),
         "samples.wjets.cross_section:", "nan", "finite number"),
    case("string-for-list", mutate(["samples", "ttbar", "files"], "ttbar.root"),
         "samples.ttbar.files:", "'ttbar.root'", "a list of strings"),
    case("list-for-mapping", mutate(["parameters"], ["jet_pt_min"]),
         "parameters:", "['jet_pt_min']", "a mapping of names to mappings with keys value, bounds"),
    case("list-for-threshold", mutate(["objects", "jets", "cuts", 0, "above"], [30]),
         "objects.jets.cuts[0].above:", "[30]", "a valid number or a valid string"),
    case("string-for-boolean", mutate(["parameters", "jet_pt_min", "trainable"], "maybe"),
         "parameters.jet_pt_min.trainable:", "'maybe'", "valid boolean"),
    case("number-as-key", mutate(["parameters", 7], {"value": 1.0, "bounds": [0.0, 2.0]}),
         "parameters.7:", "key 7 is not a string", "keys are names"),
    # missing required keys: what the key should hold
    case("missing-model", mutate(["model"], KeyError),
         "model: required key is missing", "expected a mapping with keys poi, poi_bounds, signal"),
    case("missing-files", mutate(["samples", "ttbar", "files"], KeyError),
         "samples.ttbar.files: required key is missing", "expected a list of strings"),
    case("missing-value", mutate(["parameters", "jet_pt_min", "value"], KeyError),
         "parameters.jet_pt_min.value: required key is missing", "expected a number"),
    case("missing-binning", mutate(["regions", "signal_region", "binning"], KeyError),
         "regions.signal_region.binning: required key is missing", "keys edges, bins, low, high"),
    case("missing-signal", mutate(["model", "signal"], KeyError),
         "model.signal: required key is missing", "expected a list of strings"),
    # duplicate names
    case("duplicate-sample", DEFAULT_TEXT.replace("  wjets:\n", "  ttbar:\n"),
         ":20: samples: duplicate key 'ttbar'", "first given on line 17",
         "each key may appear once"),
    case("duplicate-region", DEFAULT_TEXT.replace(
        "\nmodel:", "  signal_region: {observable: ht, binning: {edges: [0, 1]}}\n\nmodel:"),
         "regions: duplicate key 'signal_region'", "each key may appear once"),
    case("duplicate-field", DEFAULT_TEXT.replace("{value: 30.0,", "{value: 30.0, value: 40.0,"),
         "parameters.jet_pt_min: duplicate key 'value'"),
    case("duplicate-systematic", mutate(["model", "systematics"], [
        {"name": "wjets_norm", "type": "normsys", "samples": ["wjets"], "up": 1.1, "down": 0.9},
        {"name": "wjets_norm", "type": "lumi", "samples": ["wjets"], "up": 0.02}]),
         "model.systematics[1].name: duplicate name 'wjets_norm'", "taken: ['mu', 'wjets_norm']"),
    # bounds
    case("value-outside-bounds", mutate(["parameters", "jet_pt_min", "bounds"], [40.0, 120.0]),
         "parameters.jet_pt_min.value:", "value 30.0 is outside bounds [40.0, 120.0]",
         "give a value within the bounds"),
    case("bounds-decreasing", mutate(["parameters", "jet_pt_min", "bounds"], [120.0, 20.0]),
         "parameters.jet_pt_min.bounds:", "bounds must be increasing, got [120.0, 20.0]"),
    case("bounds-three-values", mutate(["parameters", "lepton_pt_min", "bounds"], [1, 2, 3]),
         "parameters.lepton_pt_min.bounds:", "[1, 2, 3]", "at most 2 items"),
    case("poi-bounds-without-start", mutate(["model", "poi_bounds"], [2.0, 5.0]),
         "model.poi_bounds:", "[2.0, 5.0] must contain 1.0"),
    case("poi-value-outside-bounds", mutate(["objective", "poi_value"], 20.0),
         "objective.poi_value:", "20.0 is outside model.poi_bounds [0.0, 10.0]"),
    # temperatures and bandwidths
    case("negative-temperature", mutate(["parameters", "btag_threshold", "temperature"], -1.0),
         "parameters.btag_threshold.temperature:", "-1.0", "greater than 0"),
    case("zero-count-temperature", mutate(["selection", 0, "temperature"], 0),
         "selection[0].temperature:", "(got 0)", "greater than 0"),
    case("negative-bandwidth", mutate(["regions", "signal_region", "bandwidth"], -40.0),
         "regions.signal_region.bandwidth:", "-40.0", "greater than 0"),
    case("zero-floor", mutate(["regions", "signal_region", "floor"], 0.0),
         "regions.signal_region.floor:", "0.0", "greater than 0"),
    # names that are not defined
    case("unknown-observable-kind", mutate(["observables", "ht", "kind"], "summ"),
         "observables.ht.kind:", "'summ'", "registered: ['branch', 'count', 'leading'"),
    case("unknown-observable", mutate(["regions", "signal_region", "observable"], "mbb"),
         "regions.signal_region.observable:", "'mbb' is not an observable",
         "defined: ['ht', 'lepton_pt']"),
    case("unknown-optimiser-name", mutate(["optimiser", "name"], "adamm"),
         "optimiser.name:", "'adamm' is not an optax optimiser", "e.g. adam, sgd"),
    case("unknown-objective", mutate(["objective", "kind"], "significance"),
         "objective.kind:", "'significance'", "'discovery_significance', 'expected_cls'"),
    case("unknown-collection", mutate(["selection", 0, "count"], "taus"),
         "selection[0].count:", "'taus' is not an object collection",
         "['bjets', 'jets', 'leptons']"),
    case("unknown-parameter-threshold", mutate(["selection", 2, "above"], "lep_cut"),
         "selection[2].above:", "'lep_cut' is not a parameter", "defined: ['btag_threshold'"),
    case("poi-sample-not-in-model", mutate(["model", "signal"], ["tt"]),
         "model.signal[0]:", "'tt' is not a nominal sample", "['ttbar', 'wjets']"),
    case("systematic-named-as-poi", mutate(["model", "systematics", 0, "name"], "mu"),
         "model.systematics[0].name:", "duplicate name 'mu'", "taken: ['mu']"),
    # binnings
    case("empty-binning", mutate(["regions", "signal_region", "binning"], {}),
         "regions.signal_region.binning:", "(got {})", "give edges, or all of bins, low, high"),
    case("empty-edges", mutate(["regions", "signal_region", "binning"], {"edges": []}),
         "regions.signal_region.binning.edges:", "at least two values, got []"),
    case("unsorted-edges",
         mutate(["regions", "signal_region", "binning"], {"edges": [0, 200, 100]}),
         "regions.signal_region.binning.edges:", "strictly increasing, got [0.0, 200.0, 100.0]"),
    case("zero-bins", mutate(["regions", "signal_region", "binning", "bins"], 0),
         "regions.signal_region.binning.bins:", "(got 0)", "greater than 0"),
    case("low-above-high", mutate(["regions", "signal_region", "binning", "low"], 2000.0),
         "regions.signal_region.binning.low:", "low=2000.0, high=1500.0", "low must be below high"),
    # files that are not a configuration
    case("yaml-unclosed-list", "name: [unclosed\n", "line 2, column 1: YAML syntax error"),
    case("yaml-unclosed-mapping", "name: x\nsamples:\n  a: {files: [x]\n",
         "line 4, column 1: YAML syntax error", "expected ',' or '}'"),
    case("yaml-tab-indent", "samples:\n\tttbar: {}\n", "YAML syntax error", "'\\t'"),
    case("empty-file", "", "the file is empty; expected a mapping of keys"),
    case("only-comments", "# nothing here\n", "the file is empty"),
    case("file-is-a-list", "- 1\n- 2\n", "<top level>: expected a mapping of keys, got list"),
    case("file-is-a-string", "just some words\n",
         "<top level>: expected a mapping of keys, got str"),
    case("not-utf8", b"name: \xff\xfe\n", "byte 6 is not UTF-8 text"),
]


@pytest.mark.parametrize("data,fragments", CASES)
def test_malformed_config(tmp_path, capsys, data, fragments):
    path = tmp_path / "bad.yaml"
    if isinstance(data, dict):
        write_config(path, data)
    elif isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    assert out.err == f"diffana: error: {message}\n"


def test_cases_are_distinct():
    assert len(CASES) >= 30
    assert len({repr(c.values[0]) for c in CASES}) == len(CASES)


def test_key_with_line_break_stays_one_line(tmp_path):
    data = mutate(["parameters", "jet\npt"], {"value": 1.0})
    with pytest.raises(ConfigError) as err:
        load(write_config(tmp_path / "c.yaml", data))
    assert "\n" not in str(err.value) and "parameters['jet\\npt'].bounds" in str(err.value)
