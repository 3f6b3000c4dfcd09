"""``diffana run --streaming``: the choice is recorded in results.json; Ctrl-C in the middle of
a streamed pass (the reading thread busy) stops the run cleanly with its checkpoint, and
``--resume`` ends where the uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import CLI, ROOT, default_config_dict, write_config
from test_resumable_stops import finish, rows

EVENTS = 5_000
STEPS = 25


def diffana_run(*args):
    return subprocess.Popen([sys.executable, "-c", CLI, "run", *map(str, args), "--quiet"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def final(run_dir) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    return {k: res[k] for k in ("objective_final", "params_final", "steps_done", "streaming")}


@pytest.mark.long  # 35 s: a subprocess run, interrupted, resumed (.ci/run runs it)
def test_ctrl_c_in_a_streamed_pass_then_resume(tmp_path):
    data = default_config_dict(EVENTS) | {"chunk_size": 512, "gradient": "forward"}
    cfg = write_config(tmp_path / "c.yaml", data)  # streaming: auto (would hold the events)
    plain, stopped = tmp_path / "plain", tmp_path / "stopped"
    finish(diffana_run(cfg, "--out", plain, "--steps", STEPS, "--streaming", "true"))
    assert final(plain)["streaming"] == {"streamed": True, "why": "streamed: streaming: true"}

    proc = diffana_run(cfg, "--out", stopped, "--steps", STEPS, "--streaming", "true")
    deadline = time.monotonic() + 300
    while rows(stopped) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # into the next pass: ten chunks, read ahead in a thread
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # no hang
    assert proc.returncode == 130, err  # no crash: the exit of an interrupted run
    (line,) = err.strip().splitlines()
    assert "interrupted by SIGINT" in line and "--resume" in line, line
    assert (stopped / "checkpoint.npz").exists()

    finish(diffana_run("--resume", stopped))
    assert final(stopped) == final(plain)


@pytest.mark.long  # 25 s: three runs (.ci/run runs it)
def test_streaming_flag_overrides_and_auto_holds_small_events(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", default_config_dict(EVENTS))
    out = tmp_path / "auto"
    finish(diffana_run(cfg, "--out", out, "--steps", 1))
    choice = final(out)["streaming"]
    assert choice["streamed"] is False and choice["why"].startswith("in memory: the events need")
    proc = diffana_run("--resume", out, "--streaming", "false")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "drop streaming" in err, err


def test_streaming_true_with_the_fused_gradient_is_a_configuration_error(tmp_path):
    """``--streaming true`` cannot stream ``gradient: fused`` (every chunk at once): one line,
    exit 2, before an event is read (``auto`` holds the events instead)."""
    cfg = write_config(tmp_path / "c.yaml", default_config_dict(EVENTS) | {"gradient": "fused"})
    proc = diffana_run(cfg, "--steps", 1, "--streaming", "true", "--out", tmp_path / "run")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    (line,) = err.strip().splitlines()
    assert "c.yaml" in line and "streaming: true" in line and "gradient: fused" in line
    assert not (tmp_path / "run" / "results.json").exists()
