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
    ana = bench.reference_analysis(n)
    ana.cfg = ana.cfg.model_copy(update={"gradient": gradient})
    ours = bench.diffana_step(ana, repeat=1)
    assert ours["value"] > 1.0
    assert bench.relative_difference(ours, ref) < 1e-9
