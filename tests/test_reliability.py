"""Reliability of ``diffana run``: interrupt and resume, atomic files, NaN/inf, reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import uproot
from conftest import CLI, ROOT, default_config_dict, error_line, write_config

from diffana import cli, report
from diffana.analysis import Analysis
from diffana.optimise import Interrupted, optimise

EVENTS = 5_000  # the events test_run.py uses too: generated once per session
STEPS = 150  # a few ms each: a window of about half a second for the signal to land in
TIMINGS = {"compile_seconds", "wall_seconds", "timings"}


def numbers(run_dir) -> dict:
    """``results.json`` without its timings and without the note of where it was resumed;
    of the choice to stream, whether it streamed (why says how much memory was free)."""
    res = json.loads((run_dir / "results.json").read_text())
    res["streaming"] = res["streaming"]["streamed"]
    return {k: v for k, v in res.items() if k not in TIMINGS | {"resumed_from_steps"}}


def histograms(run_dir) -> dict:
    with uproot.open(run_dir / "histograms.root") as f:
        return {key: (h.values(flow=True), h.variances(flow=True), h.axis().edges())
                for key, h in ((k, f[k]) for k in f.keys(cycle=False, filter_classname="TH1*"))}


def history_rows(run_dir) -> int:
    try:
        return (run_dir / "history.csv").read_text().count("\n") - 1
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses share a compilation cache: only the first one compiles."""
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def diffana_run(*args, env):
    return [sys.executable, "-c", CLI, "run", *map(str, args), "--quiet"], dict(
        env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def interrupt(run_dir, signum, rows, env, *args):
    """Start ``diffana run *args``, send ``signum`` once ``history.csv`` has ``rows`` rows."""
    cmd, kw = diffana_run(*args, env=env)
    proc = subprocess.Popen(cmd, **kw)
    deadline = time.monotonic() + 300
    while history_rows(run_dir) < rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.long  # ~25 s: three subprocess runs (.ci/run runs it)
def test_interrupt_resume_and_reproducibility(tmp_path, env):
    """Two runs in fresh processes agree bitwise (results.json, history.csv, histograms); so
    does a run stopped by SIGTERM and resumed."""
    cfg = write_config(tmp_path / "small.yaml", default_config_dict(EVENTS))
    plain, stopped = [tmp_path / "plain1", tmp_path / "plain2"], tmp_path / "stopped"
    cmd, kw = diffana_run(cfg, "--out", plain[0], "--steps", STEPS, env=env)
    proc = subprocess.run(cmd, timeout=600, **kw)  # alone: it fills the compilation cache
    assert proc.returncode == 0, proc.stderr
    cmd, kw = diffana_run(cfg, "--out", plain[1], "--steps", STEPS, env=env)
    second = subprocess.Popen(cmd, **kw)  # side by side with the one to stop

    rc, err = interrupt(stopped, signal.SIGTERM, 3, env, cfg, "--out", stopped, "--steps", STEPS)
    assert rc == 143, err
    assert err.strip().count("\n") == 0 and f"diffana run --resume {stopped}" in err, err
    assert (stopped / "checkpoint.npz").is_file() and not (stopped / "results.json").exists()
    where, meta = report.read_checkpoint(stopped / "checkpoint.npz")
    assert 3 <= where.step < STEPS and meta["signal"] == "SIGTERM" and meta["seed"] == 0
    assert where.state is not None and len(where.history) == where.step
    assert history_rows(stopped) in (where.step, where.step + 1)

    cmd, kw = diffana_run("--resume", stopped, env=env)
    proc = subprocess.run(cmd, timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr
    assert not (stopped / "checkpoint.npz").exists()
    resumed = json.loads((stopped / "results.json").read_text())
    assert resumed["resumed_from_steps"] == [where.step]
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err

    reference = numbers(plain[0])
    assert reference["steps_done"] == STEPS and reference["stopped"] == "steps"
    history = (plain[0] / "history.csv").read_bytes()
    hists = histograms(plain[0])
    assert len(hists) == 4  # {initial, final} × signal_region × {ttbar, wjets}
    for other in (plain[1], stopped):
        assert numbers(other) == reference, other  # exact: the same floats in the JSON
        assert (other / "history.csv").read_bytes() == history
        assert (other / "workspace.json").read_bytes() == (plain[0] / "workspace.json").read_bytes()
        theirs = histograms(other)
        assert theirs.keys() == hists.keys()
        for key, arrays in hists.items():
            for a, b in zip(arrays, theirs[key], strict=True):
                np.testing.assert_array_equal(a, b)
    assert not [p.name for p in stopped.iterdir() if ".part" in p.name]
    # results.json is written last: a directory without it is an unfinished run
    finished = (stopped / "results.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= finished for p in stopped.iterdir())


@pytest.fixture
def terminal_sigint():
    """SIGINT handled as in a terminal (a test runner started in the background, as by ``cmd
    &`` in a script, inherits SIGINT ignored, and diffana leaves an ignored signal ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("terminal_sigint")
def test_ctrl_c_resume_then_non_finite_gradient(tmp_path, monkeypatch, capsys):
    """Ctrl-C at step 2 writes a checkpoint (exit 130); the resumed run meets a NaN in the
    gradient at step 3: exit 2 with one line, and results.json keeps the last good parameters
    and names the parameter and the stage where the NaN appears."""
    seen, bad = [], {}
    yields = Analysis.yields

    def loss_and_grad(self, u, params_fixed=None):  # cheap stand-in for the analysis
        key = tuple(np.asarray(u).tolist())
        if key not in seen:
            seen.append(key)
        grad = 2.0 * (u - 0.25)
        if len(seen) == 3 and not bad.get("interrupted"):  # step 2, the first time
            bad["interrupted"] = True
            os.kill(os.getpid(), signal.SIGINT)
        if len(seen) == 4:  # step 3
            grad = grad.at[1].set(jnp.nan)
            bad.update(self.from_unit(u, params_fixed))
        return jnp.sum((u - 0.25) ** 2), grad

    def nan_yields(self, params):  # the NaN comes from wjets' histogram at those parameters
        out = yields(self, params)
        if "btag_threshold" in bad and float(params["btag_threshold"]) == float(
                bad["btag_threshold"]):
            wjets = out["signal_region"]["wjets"]
            out["signal_region"]["wjets"] = {**wjets, "nominal": wjets["nominal"] * jnp.nan}
        return out

    monkeypatch.setattr(Analysis, "loss_and_grad", loss_and_grad)
    monkeypatch.setattr(Analysis, "yields", nan_yields)
    cfg = write_config(tmp_path / "small.yaml", default_config_dict(EVENTS))
    out = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc = cli.main(["run", str(cfg), "--out", str(out), "--steps", "8", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip().count("\n") == 0, err
    assert "interrupted by SIGINT at step 2 of 8" in err and "--resume" in err
    where, meta = report.read_checkpoint(out / "checkpoint.npz")
    assert where.step == 2 and meta["signal"] == "SIGINT"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

    rc = cli.main(["run", "--resume", str(out), "--quiet"])
    err = error_line(capsys.readouterr().err)
    assert rc == 2
    assert "gradient of parameter btag_threshold at step 3" in err
    res = json.loads((out / "results.json").read_text())
    assert res["stopped"] == ("non-finite gradient of parameter btag_threshold at step 3 "
                              "(stage: histogram, region signal_region, sample wjets)")
    assert res["steps_done"] == 2 and "last good parameters (step 2)" in res["warning"]
    assert res["resumed_from_steps"] == [2]
    last_good = report.read_history(out / "history.csv")
    assert list(last_good["step"]) == [0, 1, 2]
    for name in res["trainable"]:
        assert res["params_final"][name] == last_good[name][-1]
        assert res["params_non_finite"][name] == float(bad[name])
    assert res["params_non_finite"] != res["params_final"]


def quadratic(u):
    return jnp.sum((u - jnp.array([0.3, 1.4])) ** 2) + jnp.sum(jnp.sin(5.0 * u))


@pytest.mark.parametrize("name,options,stop_at", [
    ("adam", {"learning_rate": 0.05}, 0), ("adam", {"learning_rate": 0.05}, 7),
    ("adam", {"learning_rate": 0.05}, 20), ("lbfgs", {}, 7)])
def test_optimise_resumes_bitwise(name, options, stop_at):
    full = optimise(quadratic, jnp.array([0.9, 0.5]), name, options, steps=20, progress=False)

    def stop(step, loss, u):
        if step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        optimise(quadratic, jnp.array([0.9, 0.5]), name, options, steps=20, progress=False,
                 on_step=stop)
    where = info.value.resume
    assert where.step == stop_at and len(where.history) == stop_at
    assert (where.state is None) == (stop_at == 0)
    res = optimise(quadratic, None, name, options, steps=20, progress=False, resume=where)
    assert res.loss == full.loss and res.stopped == full.stopped
    np.testing.assert_array_equal(res.params, full.params)
    assert [(s, v) for s, v, _ in res.history] == [(s, v) for s, v, _ in full.history]
    np.testing.assert_array_equal(np.array([u for *_, u in res.history]),
                                  np.array([u for *_, u in full.history]))


def test_optimise_names_the_non_finite_parameter():
    res = optimise(lambda u: (jnp.sum(u**2), jnp.array([1.0, jnp.inf])), jnp.array([0.5, 0.5]),
                   "sgd", {"learning_rate": 0.1}, steps=5, progress=False,
                   names=["jet_pt_min", "btag_threshold"])
    assert res.stopped == "non-finite gradient of parameter btag_threshold at step 0"
    np.testing.assert_array_equal(res.non_finite_u, [0.5, 0.5])


def test_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    report.write_json(path, {"objective_final": 1.0})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        report.write_json(path, {"objective_final": 2.0})
    assert json.loads(path.read_text()) == {"objective_final": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_resume_refuses(tmp_path, capsys):
    """Nothing to resume, a finished run, a changed configuration: one line, exit 2."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.resolved.yaml").write_text("name: x\n")
    assert cli.main(["run", "--resume", str(run_dir)]) == 2
    assert "no checkpoint.npz" in capsys.readouterr().err
    report.write_checkpoint(run_dir / "checkpoint.npz", None, {"config_sha256": "0" * 64})
    assert cli.main(["run", "--resume", str(run_dir)]) == 2
    assert "changed since the run was interrupted" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(run_dir), "--steps", "3"]) == 2
    assert "drop steps" in capsys.readouterr().err
    (run_dir / "results.json").write_text("{}")
    assert cli.main(["run", "--resume", str(run_dir)]) == 2
    assert "the run has finished" in capsys.readouterr().err
    assert cli.main(["run"]) == 2


def test_a_signal_swallowed_in_a_callback_is_raised_at_the_next_check(capfd):
    """SIGINT that arrives while a weak reference's callback runs (the garbage collector's
    moment, anywhere in a run): Python ignores what the callback raises, so the run went on
    and finished with exit 0 after printing "Exception ignored in: ..." with a traceback.
    The signal is now pending (check() raises it) and nothing is printed."""
    import weakref

    from diffana.optimise import Interrupted
    from diffana.signals import Signals

    class Owner:
        pass

    # as in a terminal: a runner started in the background (`cmd &`, nohup) has SIGINT
    # ignored, and Signals leaves an ignored signal ignored
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    signals = Signals()
    with signals.installed():
        owner = Owner()
        ref = weakref.ref(owner, lambda _: signal.raise_signal(signal.SIGINT))
        del owner  # the callback runs, the handler raises inside it, Python swallows it
        assert ref() is None and signals.pending == signal.SIGINT
        with pytest.raises(Interrupted) as err:
            signals.check()
        assert err.value.signum == signal.SIGINT
    signal.signal(signal.SIGINT, before)
    assert capfd.readouterr().err == ""
