"""Held-out events (``split:``): the hash, the parts' weights, every executor, results.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, default_config_dict

from diffana import split
from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.exceptions import ConfigError
from diffana.run import run

N_EVENTS = 4_000
FRACTION = 0.3


def split_config(**extra) -> dict:
    data = default_config_dict(N_EVENTS)
    data["split"] = {"test_fraction": FRACTION, "seed": 3}
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def held():
    return Analysis(load_dict(split_config()), ROOT / "configs", progress=False)


def test_flags_are_addressed_not_sequential():
    entries = np.arange(20_000)
    whole = split.is_test(1, 0.25, ["dir/a.root", "b.root"], np.zeros(20_000, int), entries)
    pieces = np.concatenate([split.is_test(1, 0.25, ["other/dir/a.root"],
                                              np.zeros(len(entries[a:a + 700]), int),
                                              entries[a:a + 700]) for a in range(0, 20_000, 700)])
    np.testing.assert_array_equal(whole, pieces)  # chunking and directory do not matter
    assert abs(whole.mean() - 0.25) < 0.01
    other_seed = split.is_test(2, 0.25, ["a.root"], np.zeros(20_000, int), entries)
    other_file = split.is_test(1, 0.25, ["c.root"], np.zeros(20_000, int), entries)
    assert (whole != other_seed).mean() > 0.3 and (whole != other_file).mean() > 0.3


def _hard_by_numpy(ana: Analysis, params: dict) -> dict:
    """``{part: {region: {sample: values}}}``: np.histogram of every event's hard value and
    weight, weighted by test flags computed here from the entry numbers (one file per
    sample, no preselection: the events are in file order)."""
    from diffana.stages import samples_of

    out: dict = {"train": {}, "test": {}}
    training = ana.region_events(params, hard=True)  # the default part: training events
    for g, events in ana.executor.event_parts(params, True, part="all"):
        for sample, regions in samples_of(ana.executor.kernel, g, events):
            reader = next(r for r in ana.readers if r.name == sample)
            for r, (x, w) in regions.items():
                x, w = np.asarray(x), np.asarray(w)
                test = split.is_test(3, FRACTION, [reader.files[0].name],
                                        np.zeros(len(x), int), np.arange(len(x)))
                np.testing.assert_allclose(np.asarray(training[sample][r][1]),
                                           w * (1 - test) / (1 - FRACTION), rtol=1e-15)
                edges = ana.cfg.regions[r].binning.edges
                for part, f in (("train", (1 - test) / (1 - FRACTION)), ("test", test / FRACTION)):
                    out[part].setdefault(r, {})[sample] = np.histogram(x, edges, weights=w * f)[0]
    return out


def test_hard_histograms_of_each_part_equal_numpy(held):
    p = held.initial_params()
    expected = _hard_by_numpy(held, p)
    for part in ("train", "test"):
        hists = held.hard_histograms(p, part=part)
        for r, by_sample in expected[part].items():
            for sample, values in by_sample.items():
                np.testing.assert_allclose(hists[r][sample].values(), values, rtol=1e-12,
                                           atol=1e-12)
    # the default is the test part, and the two parts differ
    default = held.hard_histograms(p)["signal_region"]["ttbar"].values()
    np.testing.assert_allclose(default, expected["test"]["signal_region"]["ttbar"], rtol=1e-12)
    assert not np.allclose(expected["test"]["signal_region"]["ttbar"],
                           expected["train"]["signal_region"]["ttbar"])


def test_training_yields_weigh_training_events(held):
    p = held.initial_params()
    soft = held.yields(p)
    kernel_all = held.executor.kernel.for_part("all")
    from diffana.executors.chunked import sum_over
    from diffana.stages import by_sample

    all_yields = by_sample(kernel_all, sum_over("yields", kernel_all, (p,), held.executor.chunks))
    # different from all events (the part matters), within sampling noise of them
    for s in ("ttbar", "wjets"):
        a, t = np.asarray(soft["signal_region"][s]["nominal"]), np.asarray(
            all_yields["signal_region"][s]["nominal"])
        assert not np.allclose(a, t)
        assert abs(a.sum() / t.sum() - 1) < 0.1


def test_without_split_every_part_is_all_events(compiled_small):
    p = compiled_small.initial_params()
    parts = [compiled_small.hard_histograms(p, part=part) for part in ("train", "test", "all")]
    for hists in parts[1:]:
        for r in hists:
            for s in hists[r]:
                np.testing.assert_array_equal(hists[r][s].values(), parts[0][r][s].values())
    assert compiled_small.cfg.split is None and "__test__" not in compiled_small.plan.event_branches


def test_streamed_equals_held(held):
    data = split_config(streaming=True, chunk_size=1_000, lowered_cache=False)
    streamed = Analysis(load_dict(data), ROOT / "configs", progress=False)
    p = held.initial_params()
    assert float(streamed.objective(p)) == pytest.approx(float(held.objective(p)), rel=1e-10)
    for part in ("train", "test"):
        assert streamed.hard_objective(p, part=part) == pytest.approx(
            held.hard_objective(p, part=part), rel=1e-10)
    u = held.to_unit(p)
    held.executor.gradient = streamed.executor.gradient = "reverse"
    try:
        (lh, gh), (ls, gs) = held.loss_and_grad(u), streamed.loss_and_grad(u)
    finally:
        held.executor.gradient = "auto"
    assert float(ls) == pytest.approx(float(lh), rel=1e-10)
    np.testing.assert_allclose(np.asarray(gs), np.asarray(gh), rtol=1e-8, atol=1e-12)


def test_awkward_equals_compiled(held):
    ak_engine = Analysis(held.cfg, ROOT / "configs", engine="awkward", progress=False)
    p = held.initial_params()
    assert float(ak_engine.objective(p)) == pytest.approx(float(held.objective(p)), rel=1e-10)
    assert ak_engine.hard_objective(p) == pytest.approx(held.hard_objective(p), rel=1e-10)


def test_dask_equals_held(held):
    pytest.importorskip("distributed")
    data = split_config(executor={"kind": "dask", "workers": 1}, chunk_size=1_500)
    ana = Analysis(load_dict(data), ROOT / "configs", progress=False)
    try:
        p = held.initial_params()
        assert float(ana.objective(p)) == pytest.approx(float(held.objective(p)), rel=1e-10)
        for part in ("train", "test"):
            assert ana.hard_objective(p, part=part) == pytest.approx(
                held.hard_objective(p, part=part), rel=1e-10)
    finally:
        ana.close()


def test_cutflow_counts_the_test_events(held):
    """The cutflow follows the hard evaluations: test events, weights × 1/f, raw counts of
    test events; a region's last step equals its hard histograms' total."""
    from diffana import tables

    p = held.initial_params()
    flows = tables.cutflow(held, p)
    hists = held.hard_histograms(p)
    numpy_hists = _hard_by_numpy(held, p)["test"]
    from diffana.stages import samples_of

    counts = {sample: len(regions["signal_region"][0])
              for g, events in held.executor.event_parts(p, True, part="all")
              for sample, regions in samples_of(held.executor.kernel, g, events)}
    for sample, steps in flows.items():
        reader = next(r for r in held.readers if r.name == sample)
        n = counts[sample]
        test = split.is_test(3, FRACTION, [reader.files[0].name], np.zeros(n, int), np.arange(n))
        assert steps[0][2] == int(test.sum())  # all events: the test events, counted
        last = dict((step, w) for step, w, _ in steps)["signal_region"]
        assert last == pytest.approx(hists["signal_region"][sample].values().sum(), rel=1e-12)
        assert last == pytest.approx(numpy_hists["signal_region"][sample].sum(), rel=1e-12)


def test_run_reports_test_and_training_hard_objectives(tmp_path, held, monkeypatch):
    from conftest import write_config

    from diffana import guards

    compared = {}
    run_flags = guards.run_flags

    def spy(*args):
        compared.update(args[-1])
        return run_flags(*args)

    monkeypatch.setattr(guards, "run_flags", spy)
    path = write_config(tmp_path / "split.yaml", split_config())
    res = run(path, steps=2, out=tmp_path / "run", progress=False)
    # the soft objective (training events) is held against the training events' hard one
    assert compared["initial"] == (res["objective_initial"],
                                   res["hard_train"]["objective_initial"])
    assert compared["final"] == (res["objective_final"], res["hard_train"]["objective_final"])
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["split"] == {"test_fraction": FRACTION, "seed": 3}
    p = held.initial_params()
    assert res["hard"]["objective_initial"] == pytest.approx(held.hard_objective(p), rel=1e-12)
    assert res["hard_train"]["objective_initial"] == pytest.approx(
        held.hard_objective(p, part="train"), rel=1e-12)
    assert res["hard"]["objective_initial"] != res["hard_train"]["objective_initial"]
    assert res["objective_initial"] == pytest.approx(float(held.objective(p)), rel=1e-10)
    from diffana.report import summary

    text = summary(res)
    assert "hard cuts, test events" in text and "hard cuts, training events" in text


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2])
def test_fraction_outside_unit_interval_is_a_one_line_error(fraction):
    data = split_config()
    data["split"]["test_fraction"] = fraction
    with pytest.raises(ConfigError) as err:
        load_dict(data, source="cfg.yaml")
    message = str(err.value)
    assert "split.test_fraction" in message and "\n" not in message
