"""The evaluations at the initial cuts in a thread while the optimiser steps
(``diffana.run._Initial``): the run directory holds the same numbers as when the main thread
evaluates them after the last step, and a failure in the thread changes nothing."""

from __future__ import annotations

import json

import pytest
from conftest import default_config_dict, write_config

from diffana import analysis
from diffana.executors.held import HeldExecutor
from diffana.run import run

EVENTS = 3_000
pytestmark = pytest.mark.long  # 30 s: three runs (.ci/run runs them)


def _run(tmp_path, name: str) -> dict:
    cfg = write_config(tmp_path / f"{name}.yaml", default_config_dict(EVENTS))
    out = tmp_path / name
    run(cfg, steps=2, out=out, progress=False)
    results = json.loads((out / "results.json").read_text())
    cutflow = (out / "cutflow.csv").read_text()
    return {"hard": results["hard"], "sensitivity": results["sensitivity"],
            "cutflow": cutflow, "workspace": (out / "workspace.json").read_text()}


@pytest.fixture(scope="module")
def in_the_main_thread(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HeldExecutor, "alongside", False)
        return _run(tmp_path_factory.mktemp("main"), "main")


def test_the_same_numbers_as_after_the_last_step(tmp_path, in_the_main_thread):
    assert HeldExecutor.alongside
    assert _run(tmp_path, "alongside") == in_the_main_thread


def test_a_failure_in_the_thread_is_evaluated_again(tmp_path, monkeypatch, in_the_main_thread):
    calls = []
    hard_histograms = analysis.Analysis.hard_histograms

    def fails_once(self, params, part="test"):
        calls.append(part)
        if len(calls) == 1:  # the thread's
            raise RuntimeError("the thread's evaluation fails")
        return hard_histograms(self, params, part)

    monkeypatch.setattr(analysis.Analysis, "hard_histograms", fails_once)
    assert _run(tmp_path, "failed") == in_the_main_thread
    assert len(calls) == 3  # the thread's, then the initial and final cuts' in the main thread
