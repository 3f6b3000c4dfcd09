"""``diffana validate`` refuses every configuration that ``run`` refuses before its first
optimisation step: each case is built to fail ``run``'s preparation or reading, and must fail
``validate`` too, with the same one line and exit code 2 — without reading an event."""

from __future__ import annotations

import copy
import re

import pytest
from conftest import write_config
from test_data_errors import config, nano

from diffana.analysis import Analysis
from diffana.cli import main
from diffana.config import load
from diffana.exceptions import DiffanaError
from diffana.io import write_events


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate")
    return {"s": write_events(d / "s.root", nano(300, 1)),
            "b": write_events(d / "b.root", nano(300, 2)),
            "empty": write_events(d / "empty.root", nano(0)),
            "missing": d / "missing.root"}


def _leading_on_soft(data, files):
    data["observables"]["j0"] = {"kind": "leading", "collection": "jets", "field": "pt"}
    data["regions"]["MET"]["observable"] = "j0"


def _subset_with_fields(data, files):
    data["objects"]["central"] = {"source": "jets", "fields": {"phi": "Jet_phi"}}


def _no_such_device(data, files):
    data["device"] = "gpu"  # this machine (and CI) has none


def _missing_branch(data, files):
    data["objects"]["jets"]["fields"]["btag"] = "Jet_btagDeepFlavB"
    data["observables"]["nb"] = {"kind": "sum", "collection": "jets", "field": "btag"}


def _missing_event_branch(data, files):
    data["observables"]["met"]["options"]["branch"] = "PuppiMET_pt"


def _missing_file(data, files):
    data["samples"]["b"]["files"] = [str(files["missing"])]


def _empty_sample(data, files):
    data["samples"]["b"]["files"] = [str(files["empty"]), str(files["empty"])]


#: case -> (how the configuration is broken, what the one line says)
CASES = {
    "leading on a soft-cut collection": (_leading_on_soft, r"observables\.j0\.collection: "
                                         r"'leading' needs a collection without soft cuts"),
    "fields on a subset": (_subset_with_fields, r"objects\.central\.fields"),
    "no such device": (_no_such_device, r"device: 'gpu': JAX finds no such device"),
    "missing field branch": (_missing_branch, r"s\.root: branch 'Jet_btagDeepFlavB' not found"),
    "missing event branch": (_missing_event_branch, r"s\.root: branch 'PuppiMET_pt' not found"),
    "missing file": (_missing_file, r"missing\.root"),
    "sample without events": (_empty_sample, r"empty\.root: no events in 'Events'"),
}


@pytest.mark.parametrize("case", CASES)
def test_validate_refuses_what_run_refuses(case, files, tmp_path, capsys):
    breaks, message = CASES[case]
    data = copy.deepcopy(config([files["s"]], [files["b"]]))
    breaks(data, files)
    path = write_config(tmp_path / "c.yaml", data)

    with pytest.raises(DiffanaError) as err:  # what run meets while it prepares and reads
        Analysis(load(path), base_dir=tmp_path, progress=False, source=str(path))
    run_line = str(err.value)
    assert re.search(message, run_line), run_line
    capsys.readouterr()  # what the preparation said while it read

    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in captured.err
    assert line.startswith("diffana: error: ") and re.search(message, line), line
    assert line == f"diffana: error: {run_line}"  # word for word what run says
    assert any(str(f) in line for f in (path, *files.values()))  # the file it is about


def test_the_unbroken_configuration_is_valid(files, tmp_path, capsys):
    """The base of every case above passes both (so each case fails for its own reason)."""
    path = write_config(tmp_path / "c.yaml", config([files["s"]], [files["b"]]))
    Analysis(load(path), base_dir=tmp_path, progress=False)
    assert main(["validate", str(path)]) == 0
    assert "2 input files checked" in capsys.readouterr().out


def test_a_network_is_counted_with_its_weights(files, tmp_path, capsys):
    data = config([files["s"]], [files["b"]])
    data["observables"]["score"] = {"kind": "mlp", "options": {"inputs": ["ht", "met"],
                                                               "hidden": [4], "seed": 0}}
    data["regions"]["MET"] = {"observable": "score", "binning": {"bins": 4, "low": 0, "high": 1},
                              "bandwidth": 0.1}
    path = write_config(tmp_path / "nn.yaml", data)
    assert main(["validate", str(path)]) == 0
    # (2 inputs + 1) × 4 + (4 + 1) × 1 weights
    assert "1 trainable parameter, 17 score weights, 2 input files" in capsys.readouterr().out
