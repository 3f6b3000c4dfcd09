"""No phase of a run ends in a traceback or a crash: a signal after the last step, a
selection that keeps no event, an optional dependency that is not installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import CLI, DATA, ROOT, default_config_dict, write_config

from diffana import cli

EVENTS = 5_000  # the events test_run.py uses too: generated once per session


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses share a compilation cache: only the first one compiles."""
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def rows(run_dir) -> int:
    try:
        return (run_dir / "history.csv").read_text().count("\n") - 1
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize(("signum", "delay", "figures"), [
    (signal.SIGINT, 0.0, "thread"), (signal.SIGTERM, 1.5, "thread"),
    pytest.param(signal.SIGINT, 1.5, "process", marks=pytest.mark.long)],
    ids=["SIGINT-at-once", "SIGTERM-later", "SIGINT-figure-processes"])
def test_signal_after_the_last_step(tmp_path, env, signum, delay, figures):
    """A signal once the last history.csv row is written (the hard histograms, the sensitivity,
    the plots and files follow): exit 128 + signal with one line, never a segmentation fault,
    and a run directory that is finished or resumable (checkpoint.npz, no results.json).
    The same with the figures drawn in processes (a run's default); ``communicate`` returns
    once no process holds the run's standard error, the figure processes included."""
    cfg = write_config(tmp_path / "small.yaml", default_config_dict(EVENTS))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "run", str(cfg), "--out", str(out), "--steps", "1",
         "--quiet"], env={**env, "DIFFANA_FIGURES": figures},
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while rows(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    # one line (after any physics warning said before the signal came), no traceback
    *before, last = err.rstrip("\n").split("\n")
    assert last.startswith("diffana: interrupted by "), err
    assert all(line.startswith("diffana: warning ") for line in before), err
    finished = (out / "results.json").is_file()
    assert finished != (out / "checkpoint.npz").is_file(), sorted(os.listdir(out))
    assert ("--resume" in err) != finished


@pytest.mark.long  # 80 s: the AGC run with zero events (.ci/run runs it)
def test_selection_that_keeps_no_event(tmp_path, capsys):
    """The AGC configuration on a real NanoAOD file with a jet cut no jet passes: the
    preselection keeps no event. A run with zero yields and warnings, no traceback (before:
    TypeError from the trijet structure of an empty array)."""
    data = yaml.safe_load((ROOT / "configs" / "agc_ttbar.yaml").read_text())
    data["imports"] = [str((ROOT / "configs" / p).resolve()) for p in data["imports"]]
    del data["generate"]
    for sample in data["samples"].values():
        sample["files"] = [str(DATA / "cms2015_wjets_nanoaod_200.root")]
    data["objects"]["jets"]["cuts"][1] = {"field": "eta", "abs": True, "below": 0.001}
    data["inference"] = False  # its zero yields: warnings (tests/test_inference.py), 15 s
    cfg = write_config(tmp_path / "empty.yaml", data)
    out = tmp_path / "run"
    assert cli.main(["run", str(cfg), "--steps", "0", "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "warning" in captured.out
    assert (out / "results.json").is_file()


def test_dask_executor_without_the_extra(tmp_path, monkeypatch, capsys):
    """--executor dask where dask[distributed] is not installed: one line naming the extra,
    exit 2 (before: a ModuleNotFoundError traceback)."""
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    monkeypatch.delitem(sys.modules, "diffana.executors.dask", raising=False)
    cfg = write_config(tmp_path / "small.yaml", default_config_dict(EVENTS))
    assert cli.main(["run", str(cfg), "--executor", "dask", "--workers", "1", "--steps", "0",
                     "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"diffana: error: {cfg}: executor: dask needs the optional dependency "
                          "dask[distributed] (distributed is not installed): "
                          'pip install "diffana[dask]"'), err
