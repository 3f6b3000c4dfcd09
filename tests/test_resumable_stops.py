"""A run stopped by a cause outside it — an input file changed, the Dask scheduler lost —
writes its checkpoint, says so in one line (exit 2), and resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, default_config_dict, write_config

from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.exceptions import InputChanged
from diffana.generate import ensure_generated

EVENTS = 5_000  # the events the other run tests use: generated once per session
STEPS = 60


def own_copy(tmp_path, **overrides) -> dict:
    """The small default configuration on copies of its generated files (the test changes
    them; the shared event cache must stay as it is)."""
    data = default_config_dict(EVENTS)
    g = data.pop("generate")
    cache = ensure_generated(g["kind"], g["events"], g["seed"], progress=None)
    for name, sample in data["samples"].items():
        shutil.copy2(cache / f"{name}.root", tmp_path / f"{name}.root")
        sample["files"] = [str(tmp_path / f"{name}.root")]
    data.update(chunk_size=1024, gradient="forward", **overrides)
    return data


def touch_bytes(path) -> None:
    with open(path, "ab") as f:  # a file rewritten under the run: another size
        f.write(b"\0" * 16)


def diffana_run(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "diffana.cli", "run", *map(str, args),
                             "--quiet"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def rows(run_dir) -> int:
    try:
        return (run_dir / "history.csv").read_text().count("\n") - 1
    except FileNotFoundError:
        return 0


def finish(proc) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def wait_for_rows(proc, run_dir, n: int) -> None:
    deadline = time.monotonic() + 300
    while rows(run_dir) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def final(run_dir) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    return {k: res[k] for k in ("objective_final", "params_final", "steps_done")}


def test_streamed_pass_refuses_a_changed_input(tmp_path):
    cfg = load_dict(own_copy(tmp_path, streaming=True), source="changed")
    ana = Analysis(cfg, tmp_path, progress=False)
    p0 = ana.initial_params()
    ana.loss_and_grad(ana.to_unit(p0), p0)
    touch_bytes(tmp_path / "wjets.root")
    with pytest.raises(InputChanged, match=r"wjets\.root: input file changed since the run "
                                           r"started \(size \d+ → \d+ bytes\)"):
        ana.loss_and_grad(ana.to_unit(p0), p0)


@pytest.mark.long  # ~40 s: runs interrupted by a changed input, resumed (.ci/run runs it)
def test_input_changed_mid_run_checkpoints_and_resumes(tmp_path):
    """Streaming reads the files every step: a file changed mid-run stops the run with one
    line and a checkpoint; with the file restored, --resume ends where an uninterrupted run
    ends, and results.json records every input's identity."""
    data = own_copy(tmp_path, streaming=True)
    cfg = write_config(tmp_path / "c.yaml", data)
    plain, stopped = tmp_path / "plain", tmp_path / "stopped"
    proc = diffana_run(cfg, "--out", plain, "--steps", STEPS)
    finish(proc)
    kept = tmp_path / "kept.root"
    shutil.copy2(tmp_path / "wjets.root", kept)
    proc = diffana_run(cfg, "--out", stopped, "--steps", STEPS)
    wait_for_rows(proc, stopped, 3)
    touch_bytes(tmp_path / "wjets.root")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    (line,) = err.strip().splitlines()
    assert re.search(r"wjets\.root: input file changed since the run started .*checkpoint "
                     r"written to .*continue with: diffana run --resume", line), line
    assert (stopped / "checkpoint.npz").exists() and not (stopped / "results.json").exists()

    # still changed: --resume refuses in one line and keeps the checkpoint
    proc = diffana_run("--resume", stopped)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "wjets.root: input file changed" in err, err
    assert len(err.strip().splitlines()) == 1 and (stopped / "checkpoint.npz").exists()

    shutil.copy2(kept, tmp_path / "wjets.root")  # the same bytes and modification time
    proc = diffana_run("--resume", stopped)
    finish(proc)
    assert final(stopped) == final(plain)
    inputs = json.loads((stopped / "results.json").read_text())["inputs"]
    assert {i["path"] for i in inputs} == {str(tmp_path / "ttbar.root"),
                                           str(tmp_path / "wjets.root")}
    assert all(set(i) == {"path", "size", "mtime_ns", "uuid", "tree", "entries"}
               for i in inputs)


@pytest.fixture
def scheduler(tmp_path):
    """An external Dask scheduler with one worker, each its own process."""
    pytest.importorskip("distributed")
    file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    sched = subprocess.Popen([*dask, "--scheduler-file", str(file), "--port", "0",
                              "--no-dashboard"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    address = json.loads(file.read_text())["address"]
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                               "--nthreads", "1", "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield sched, address
    for p in (worker, sched):
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.long  # ~40 s: a scheduler, a worker and three runs (.ci/run runs it)
def test_lost_scheduler_checkpoints_and_resumes(tmp_path, scheduler):
    sched, address = scheduler
    cfg = write_config(tmp_path / "c.yaml", own_copy(tmp_path))
    plain, stopped = tmp_path / "plain", tmp_path / "stopped"
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")
    proc = diffana_run(cfg, "--out", plain, "--steps", STEPS)
    finish(proc)
    proc = diffana_run(cfg, "--out", stopped, "--steps", STEPS, "--executor", "dask",
                       "--address", address, env=env)
    wait_for_rows(proc, stopped, 3)
    sched.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert f"dask scheduler {address}: connection lost" in line
    assert "continue with: diffana run --resume" in line
    assert (stopped / "checkpoint.npz").exists() and not (stopped / "results.json").exists()
    proc = diffana_run("--resume", stopped, "--executor", "local")
    finish(proc)
    a, b = final(stopped), final(plain)
    assert a["steps_done"] == b["steps_done"]
    np.testing.assert_allclose(a["objective_final"], b["objective_final"], rtol=1e-9)
    for n, v in b["params_final"].items():
        np.testing.assert_allclose(a["params_final"][n], v, rtol=1e-9)
