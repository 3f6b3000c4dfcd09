"""Shared fixtures: float64 JAX, a private event cache, small generated samples."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

# XLA's backend optimisation (LLVM's passes over each compiled program) is about a third of
# a compilation, and the suite compiles hundreds of programs that each run a few times: the
# tests (and the runs they start) compile without it. Their numbers differ from an optimised
# program's in the last bits (the AGC's by up to ~1e-10 relative); every comparison between
# two of the suite's evaluations is made under the same setting, and the golden values are
# computed with the flags the suite was given, in a process of their own
# (tests/test_golden.py). Whoever sets XLA_FLAGS tests with those (XLA_FLAGS= : XLA's
# defaults throughout).
# (what the first process was given: pytest-xdist's workers inherit the flags set here)
_GIVEN = "DIFFANA_TESTS_GIVEN_XLA_FLAGS"
os.environ.setdefault(_GIVEN, json.dumps(os.environ.get("XLA_FLAGS")))
GIVEN_XLA_FLAGS = json.loads(os.environ[_GIVEN])
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402 - after XLA_FLAGS: the backend reads them once
import pytest  # noqa: E402
import yaml  # noqa: E402

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
DEFAULT_CONFIG = ROOT / "configs" / "ttbar_vs_wjets.yaml"


@pytest.hookimpl(trylast=True)  # after pytest's cache (config.cache) is set up
def pytest_configure(config):
    """Compiled functions persist across test sessions (JAX's compilation cache under
    .pytest_cache); diffana keeps a directory set for JAX itself. The pytest-xdist workers
    share one directory, so a program one worker compiled the other loads (in a run from an
    empty cache, XLA's compilation is about half the suite's time, and the workers compile
    many of the same programs). JAX writes an entry in place (no rename): a worker that reads
    one the other is still writing fails to decompress it, warns (not an error here) and
    compiles for itself, with the same numbers."""
    if jax.config.jax_compilation_cache_dir is None and getattr(config, "cache", None):
        jax.config.update("jax_compilation_cache_dir", str(config.cache.mkdir("jax-compilation")))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    config.addinivalue_line("filterwarnings",
                            "ignore:Error (reading|writing) persistent compilation cache entry")


@pytest.fixture(scope="session", autouse=True)
def _event_cache(tmp_path_factory):
    """Generated events go to a private cache, never the user's. Figures are drawn in a
    thread of the run's process: each figure process costs ~2 s of the two cores to start,
    and the suite makes a hundred runs (tests/test_figure_process.py and the inference run
    of tests/test_inference_run.py draw in processes, as a run does by default)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DIFFANA_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("DIFFANA_FIGURES", "thread")
    yield
    mp.undo()


#: ``python -c CLI run ...`` is ``diffana run ...`` with SIGINT handled as in a terminal: a test
#: runner started in the background (``cmd &`` in a script) passes SIGINT on ignored, and
#: diffana leaves an ignored signal ignored
CLI = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
       "from diffana.cli import main; sys.exit(main(sys.argv[1:]))")


def default_config_dict(events: int = 20_000) -> dict:
    """The default analysis with a small generated sample, without the inference at the end
    of a run (tests/test_inference_run.py runs it)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data = copy.deepcopy(data)
    data["generate"]["events"] = events
    data["inference"] = {"enabled": False}
    return data


@pytest.fixture(scope="session")
def small_config():
    from diffana.config import load_dict

    return load_dict(default_config_dict(5_000), source="small")


@pytest.fixture(scope="session")
def compiled_small(small_config):
    from diffana.analysis import Analysis

    return Analysis(small_config, ROOT / "configs", engine="compiled", progress=False)


@pytest.fixture(scope="session")
def awkward_small(small_config):
    from diffana.analysis import Analysis

    return Analysis(small_config, ROOT / "configs", engine="awkward", progress=False)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_line(err: str) -> str:
    """The one line of an error on stderr: the last; before it only the physics warnings
    said as they were found (``--quiet`` keeps them), never a traceback."""
    *before, last = err.strip().splitlines()
    assert "Traceback" not in err and last.startswith("diffana: error: "), err
    assert all(line.startswith("diffana: warning [") for line in before), err
    return last


def fused_and_reverse(ana, u, params) -> tuple:
    """``(loss, gradient)`` of ``ana`` in its own (fused) gradient mode and in reverse mode."""
    fused = ana.loss_and_grad(u, params)
    ana.executor.gradient = "reverse"
    try:
        return fused, ana.loss_and_grad(u, params)
    finally:
        ana.executor.gradient = "auto"


def whole_and_resumed(path: Path, tmp_path: Path, monkeypatch, at: int = 2) -> tuple[dict, dict]:
    """The results of ``path`` run whole (in ``tmp_path/whole``), and run to a signal after
    step ``at`` then resumed (``tmp_path/cut``)."""
    from diffana import report
    from diffana.optimise import Interrupted
    from diffana.run import run

    whole = run(path, out=tmp_path / "whole", progress=False)
    row = report.HistoryWriter.row

    def interrupt(self, step, *args):
        row(self, step, *args)
        if step == at:
            raise KeyboardInterrupt

    monkeypatch.setattr(report.HistoryWriter, "row", interrupt)
    with pytest.raises(Interrupted):
        run(path, out=tmp_path / "cut", progress=False)
    monkeypatch.setattr(report.HistoryWriter, "row", row)
    return whole, run(resume=tmp_path / "cut", progress=False)


@pytest.fixture
def copied_inputs(tmp_path):
    """``(folder, configuration)``: the small configuration's generated files (5 000 events)
    copied into ``tmp_path`` (the tests touch them), streamed in chunks of 1 024, forward."""
    import shutil

    from diffana.generate import ensure_generated

    data = default_config_dict(5_000)
    g = data.pop("generate")
    generated = ensure_generated(g["kind"], g["events"], g["seed"], progress=None)
    for name, sample in data["samples"].items():
        shutil.copy2(generated / f"{name}.root", tmp_path / f"{name}.root")
        sample["files"] = [str(tmp_path / f"{name}.root")]
    data.update(chunk_size=1024, gradient="forward", streaming=True)
    return tmp_path, data
