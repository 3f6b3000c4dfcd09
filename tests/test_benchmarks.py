"""benchmarks/reference.yaml states exactly the physics of the hand-written JAX reference."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("benchmark_run", ROOT / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("gradient", ["fused", "forward"])
def test_reference_config_equals_reference_pipeline(gradient):
    n = 5_000
    ref = bench.reference_step(n, repeat=1)
    ana = bench.reference_analysis(n, gradient=gradient)
    assert ana.executor.gradient_mode == gradient
    ours = bench.diffana_step(ana, repeat=1)
    assert ours["value"] > 1.0
    assert bench.relative_difference(ours, ref) < 1e-9


@pytest.mark.slow  # ~25 s: two benchmark processes and the awkward engine
def test_gpu_check_rehearsal(tmp_path):
    """benchmarks/gpu_check.sh end to end without a GPU (ALLOW_CPU=1): the JSON it prints
    holds the run and the awkward comparison, with values and gradients agreeing."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, ALLOW_CPU="1", SIZES="20000", AWKWARD_EVENTS="5000",
               PYTHON=sys.executable, WHEELS=str(tmp_path / "no-wheels"))
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)],
                         capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result == json.loads((tmp_path / "gpu_check.json").read_text())
    (run,) = result["runs"]
    assert run["events"] == 20_000 and run["max_relative_difference"] < 1e-9
    assert result["awkward"]["events"] == 5_000 and result["awkward"]["speedup_vs_awkward"] > 0


def test_gpu_check_refuses_without_gpu(tmp_path):
    """Without a GPU (and without ALLOW_CPU) the script says so in one line, exit code 2."""
    import os
    import subprocess
    import sys

    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("this machine has a GPU")
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_CPU"}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)],
                         capture_output=True, text=True, env=dict(env, PYTHON=sys.executable))
    assert out.returncode == 2
    assert out.stderr.strip() == "gpu_check: JAX sees no GPU here"
