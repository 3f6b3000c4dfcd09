"""Streaming (``streaming: true``): events read and lowered chunk by chunk on every evaluation
give what the in-memory engine gives; later steps never recompile."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from conftest import ROOT
from test_variations import with_variations

from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.events import StreamedSet, addressed_normal
from diffana.exceptions import ConfigError


def config(**updates):
    data = with_variations()  # a scale, a smear and a weight variation
    data.update({"chunk_size": 1024, "preselect": True, **updates})
    return load_dict(data, source="streaming")


@pytest.fixture(scope="module")
def pair():
    return (Analysis(config(), ROOT / "configs", progress=False),
            Analysis(config(streaming=True), ROOT / "configs", progress=False))


@pytest.mark.parametrize("gradient", ["forward", "reverse"])
def test_streamed_gradient_equals_in_memory(pair, gradient):
    memory, streamed = pair
    assert all(isinstance(s.events, StreamedSet) for s in streamed.samples.values())
    assert {n: s.n_events for n, s in streamed.samples.items()} == \
        {n: s.n_events for n, s in memory.samples.items()}
    p0 = memory.initial_params()
    u = memory.to_unit(p0) * 0.9 + 0.03
    held = memory.loss_and_grad(u, p0)  # fused
    streamed.executor.gradient = gradient
    loss, grad = streamed.loss_and_grad(u, p0)
    np.testing.assert_allclose(float(loss), float(held[0]), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(held[1]), rtol=1e-9)


@pytest.mark.parametrize("chunk_size", [1024, 1 << 20])
def test_a_reverse_step_reads_each_chunk_but_the_last_twice(in_memory, chunk_size, monkeypatch):
    """The last chunk of the yields pass is differentiated where it stands: a step makes
    ``2k - 1`` chunks (one pass when the events fit one chunk), with the in-memory numbers."""
    from diffana import ragged

    memory, p0, u0, (loss0, grad0) = in_memory
    ana = Analysis(config(streaming=True, gradient="reverse", chunk_size=chunk_size),
                   ROOT / "configs", progress=False)
    made, to_device = [], ragged.to_device

    def counted(host, device):  # each chunk of a pass goes to the device once
        made.append(host)
        return to_device(host, device)

    monkeypatch.setattr(ragged, "to_device", counted)
    loss, grad = ana.loss_and_grad(u0, p0)
    k = ana.executor.n_chunks
    assert (k > 1) == (chunk_size == 1024)
    # the read-ahead may make a chunk more before the second pass stops it
    assert 2 * k - 1 <= len(made) <= 2 * k - 1 + ana.executor.prefetch_depth * (k > 1)
    _close(loss, loss0)
    _close(grad, grad0)


def test_streamed_hard_histograms_and_jacobian(pair):
    memory, streamed = pair
    p0 = memory.initial_params()
    a, b = memory.hard_histograms(p0), streamed.hard_histograms(p0)
    for r in a:
        for s in a[r]:
            np.testing.assert_allclose(b[r][s].values(), a[r][s].values(), rtol=1e-12)
            np.testing.assert_allclose(b[r][s].variances(), a[r][s].variances(), rtol=1e-12)
    (ya, ja), (yb, jb) = memory.yields_and_jacobian(p0), streamed.yields_and_jacobian(p0)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-12),
                           (ya, ja), (yb, jb))


def test_later_steps_never_recompile(pair, caplog):
    memory, streamed = pair
    p0 = memory.initial_params()
    for ana in (memory, streamed):
        u = ana.to_unit(p0)
        ana.loss_and_grad(u, p0)  # compiles
        shifted = [u + shift for shift in (0.01, 0.02)]  # the test's own additions compile
        with jax.log_compiles(), caplog.at_level(logging.WARNING):
            for v in shifted:
                jax.block_until_ready(ana.loss_and_grad(v, p0))
        compiled = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
        assert not compiled, compiled
    with jax.log_compiles(), caplog.at_level(logging.WARNING):  # the check can see a compile
        jax.jit(lambda x: x + 1.0)(1.0)
    assert any("ompil" in r.getMessage() for r in caplog.records)


def test_smearing_does_not_depend_on_chunks():
    whole = addressed_normal("0/ttbar/jer_up", np.zeros(6, int), np.arange(6), np.zeros(6, int))
    parts = np.concatenate([addressed_normal("0/ttbar/jer_up", np.zeros(3, int), e,
                                             np.zeros(3, int))
                            for e in (np.arange(3), np.arange(3, 6))])
    np.testing.assert_array_equal(whole, parts)
    draws = addressed_normal("k", np.zeros(20000, int), np.arange(20000), np.zeros(20000, int))
    assert abs(draws.mean()) < 0.03 and abs(draws.std() - 1.0) < 0.03


@pytest.mark.parametrize("updates,fragment", [
    ({"streaming": True, "gradient": "fused"}, "gradient"),
    ({"streaming": True, "engine": "awkward"}, "streaming"),
])
def test_streaming_needs_compiled_chunks(updates, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config(**updates)


# --- read ahead, any chunk size: the same numbers as in memory ------------------------------


def _close(a, b, tol=1e-12):
    """Equal to ``tol`` relative to the largest magnitude (a gradient has components near 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(np.abs(b).max(), 1e-300))


@pytest.fixture(scope="module")
def in_memory(pair):
    memory, _ = pair
    p0 = memory.initial_params()
    u0 = memory.to_unit(p0) * 0.9 + 0.03
    return memory, p0, u0, memory.loss_and_grad(u0, p0)


@pytest.mark.parametrize("prefetch,chunk_size", [(0, 1024), (1, 1500), (4, 4096)])
def test_any_prefetch_depth_and_chunk_size_give_the_in_memory_numbers(in_memory, prefetch,
                                                                      chunk_size):
    from diffana.optimise import optimise

    memory, p0, u0, (loss0, grad0) = in_memory
    ana = Analysis(config(streaming=True, prefetch=prefetch, chunk_size=chunk_size),
                   ROOT / "configs", progress=False)
    assert ana.executor.prefetch_depth == prefetch
    for _ in range(2):  # the first pass reads the files, the second the lowered cache
        loss, grad = ana.loss_and_grad(u0, p0)
        _close(loss, loss0)
        _close(grad, grad0)
    assert ana.objective(p0) == pytest.approx(float(memory.objective(p0)), rel=1e-12, abs=0)
    runs = [optimise(lambda u, a=a: a.loss_and_grad(u, p0), u0, steps=3, progress=False,
                     options={"learning_rate": 0.05}) for a in (ana, memory)]
    _close(runs[0].params, runs[1].params)


def test_streamed_chunks_hold_several_sets(pair):
    """As in memory, the sets are laid end to end: every chunk but the last is full."""
    _, streamed = pair
    found = streamed.executor.first_pass
    assert found["n_chunks"] == -(-sum(found["n_events"]) // 1024)
    assert streamed.executor.kernel.layout.slots >= 2


def test_packing_lays_sets_end_to_end():
    import awkward as ak

    from diffana.chunks import packed, set_groups

    def piece(g, first, n):
        return g, ak.Array({"x": np.arange(first, first + n)}), np.arange(first, first + n) * 1.0

    pieces = [piece(0, 0, 3), piece(1, 3, 0), piece(1, 3, 2), piece(1, 5, 6), piece(2, 11, 1)]
    chunks = list(packed(iter(pieces), 4))
    assert [s for s, _, _ in chunks] == [((0, 0, 3), (1, 3, 4)), ((1, 0, 4),),
                                         ((1, 0, 3), (2, 3, 4))]
    np.testing.assert_array_equal(np.concatenate([w for _, _, w in chunks]), np.arange(12.0))
    np.testing.assert_array_equal(np.concatenate([ak.to_numpy(e.x) for _, e, _ in chunks]),
                                  np.arange(12))
    np.testing.assert_array_equal(set_groups(chunks[0][0]), [0, 0, 0, 1])
    assert [s for s, _, _ in packed(iter(pieces[:1]), 4)] == [((0, 0, 3),)]
    assert list(packed(iter([]), 4)) == []


# --- streaming: auto ------------------------------------------------------------------------


def test_auto_holds_events_that_fit_and_streams_those_that_do_not():
    small = Analysis(config(), ROOT / "configs", progress=False)  # the default: auto
    assert small.cfg.streaming == "auto"
    assert small.streaming["streamed"] is False
    assert small.streaming["why"].startswith("in memory: the events need about")
    assert "half the" in small.streaming["why"]
    big = Analysis(config(memory_limit="100kB"), ROOT / "configs", progress=False)
    assert big.streaming["streamed"] is True
    assert "more than the 100 kB of memory_limit" in big.streaming["why"]
    assert all(isinstance(s.events, StreamedSet) for s in big.samples.values())
    # the budget holds no chunk ahead: none is read ahead
    assert big.executor.prefetch_depth == 0
    p0 = small.initial_params()
    _close(big.objective(p0), small.objective(p0))


@pytest.mark.parametrize("updates,streamed,why", [
    ({"streaming": True}, True, "streamed: streaming: true"),
    ({"streaming": False}, False, "in memory: streaming: false"),
    ({"gradient": "fused"}, False, "in memory: gradient: fused"),
    ({"engine": "awkward"}, False, "in memory: the awkward engine"),
])
def test_the_choice_says_why(updates, streamed, why):
    from diffana.executors import streaming_choice

    cfg = config(**updates)
    choice = streaming_choice(cfg, cfg.engine, [], None)
    assert choice.streamed is streamed and choice.why.startswith(why)


@pytest.mark.parametrize("value,fragment", [
    ("lots", "expected a size such as 8GB"), (-1, "expected a positive size"),
    ("maybe", "streaming")])
def test_memory_limit_and_streaming_are_checked(value, fragment):
    key = "streaming" if value == "maybe" else "memory_limit"
    with pytest.raises(ConfigError, match=fragment):
        config(**{key: value})


def test_the_estimate_leaves_the_nonfinite_counts_alone(tmp_path):
    """``streaming: auto`` reads the first events to estimate their size: the NaN/inf values
    it meets are counted once, by the run, as with ``streaming: false``."""
    import warnings

    from test_data_errors import analysis, nano, with_nonfinite, write_events
    from test_data_errors import config as two_samples

    from diffana.checks import NonFiniteWarning, summary

    bad, _ = with_nonfinite(nano(6000, 8))  # more events than the estimate reads
    bad_path = write_events(tmp_path / "nan.root", bad)
    background = write_events(tmp_path / "b.root", nano(300, 9))
    counts = []
    for streaming in ("auto", False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonFiniteWarning)
            ana = analysis(two_samples([bad_path], [background], nonfinite="drop",
                                       streaming=streaming))
        assert sum(w.category is NonFiniteWarning for w in caught) == 1
        counts.append(summary(ana.readers))
    assert counts[0] == counts[1] and counts[0]["s"]["dropped_events"] == 1
