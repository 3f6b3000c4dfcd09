"""The compiled and awkward engines: same values and gradients; every JAX transform works."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from jax.test_util import check_grads

from diffana.analysis import Analysis
from diffana.exceptions import ConfigError
from diffana.executors import held
from diffana.executors.held import jit_fused, same_parameters


@pytest.mark.long  # 25 s: the awkward engine (.ci/run runs it)
def test_engines_agree(compiled_small, awkward_small):
    p = compiled_small.initial_params()
    yc, ya = compiled_small.yields(p), awkward_small.yields(p)
    for r in yc:
        for s in yc[r]:
            for k in ("nominal", "sumw2"):
                np.testing.assert_allclose(yc[r][s][k], ya[r][s][k], rtol=1e-10)
    u = compiled_small.to_unit(p)
    (lc, gc), (la, ga) = compiled_small.loss_and_grad(u), awkward_small.loss_and_grad(u)
    np.testing.assert_allclose(lc, la, rtol=1e-10)
    np.testing.assert_allclose(gc, ga, rtol=1e-8)
    assert compiled_small.hard_objective(p) == pytest.approx(awkward_small.hard_objective(p), rel=1e-10)


@pytest.mark.parametrize("engine", [
    "compiled_small",
    # the awkward engine's transforms: slow (eager), and it equals the compiled engine
    # (test_engines_agree)
    pytest.param("awkward_small", marks=pytest.mark.slow),
])
def test_transforms(engine, request):
    ana = request.getfixturevalue(engine)
    p0 = ana.initial_params()
    names = ana.trainable

    def flat_yields(theta):
        p = dict(p0)
        p.update(dict(zip(names, theta, strict=True)))
        y = ana.yields(p)
        return jnp.concatenate([y[r][s]["nominal"] for r in y for s in y[r]])

    theta = jnp.stack([p0[n] for n in names])
    jf = jax.jacfwd(flat_yields)(theta)  # all yields w.r.t. all cuts: one call
    jr = jax.jacrev(flat_yields)(theta)
    assert jf.shape == (30, 3)
    np.testing.assert_allclose(jf, jr, rtol=1e-8, atol=1e-8 * float(jnp.max(jnp.abs(jf))))
    tangent = jnp.array([1.0, -0.5, 0.25])
    _, jvp = jax.jvp(flat_yields, (theta,), (tangent,))
    np.testing.assert_allclose(jvp, jf @ tangent, rtol=1e-8, atol=1e-6)
    out, vjp_fn = jax.vjp(flat_yields, theta)
    (vjp,) = vjp_fn(jnp.ones_like(out))
    np.testing.assert_allclose(vjp, jnp.ones_like(out) @ jf, rtol=1e-8)
    _, g = ana.loss_and_grad(ana.to_unit(p0), p0)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_whole_objective_check_grads(compiled_small):
    ana = compiled_small
    p0 = ana.initial_params()
    u0 = ana.to_unit(p0)
    # the gradient the optimiser uses equals central finite differences of the loss
    _, grad = ana.loss_and_grad(u0, p0)
    for i in range(len(u0)):
        e = jnp.zeros_like(u0).at[i].set(1e-5)
        fd = (ana.loss_and_grad(u0 + e, p0)[0] - ana.loss_and_grad(u0 - e, p0)[0]) / 2e-5
        assert float(grad[i]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)
    # and through the un-jitted composition, forward and reverse
    check_grads(lambda u: ana.objective(ana.from_unit(u, p0)), (u0,), order=1,
                modes=("fwd", "rev"), eps=1e-4, atol=1e-4, rtol=1e-4)


def test_no_recompilation_between_steps(compiled_small, caplog):
    ana = compiled_small
    p0 = ana.initial_params()
    u = ana.to_unit(p0)
    ana.loss_and_grad(u, p0)  # compile once
    points = [jnp.clip(u + 0.01 * i, 0, 1) for i in range(5)]
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        caplog.clear()
        for v in points:
            loss, g = ana.loss_and_grad(v, p0)
            jax.block_until_ready(g)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert compiles == []


@pytest.mark.parametrize("gradient", ["fused", "forward", "reverse"])
def test_chunks_and_gradient_modes_agree(compiled_small, gradient):
    """Many small chunks, forward or reverse mode: the same loss and gradient as one chunk."""
    ana = compiled_small
    p0 = ana.initial_params()
    u = ana.to_unit(p0) + 0.05
    loss, grad = ana.loss_and_grad(u, p0)
    cfg = ana.cfg.model_copy(update={"chunk_size": 700, "gradient": gradient})
    chunked = Analysis(cfg, ROOT / "configs", progress=False)
    assert len(chunked.executor.chunks) >= 7
    loss2, grad2 = chunked.loss_and_grad(u, p0)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-12)
    np.testing.assert_allclose(np.asarray(grad2), np.asarray(grad), rtol=1e-10, atol=1e-14)
    hard, hard2 = ana.hard_yields(p0), chunked.hard_yields(p0)
    for s in ("ttbar", "wjets"):
        np.testing.assert_allclose(hard2["signal_region"][s]["nominal"],
                                   hard["signal_region"][s]["nominal"], rtol=1e-12)


def test_fused_step_memory_does_not_grow_with_chunks(small_config):
    """The fused gradient step holds one chunk's intermediate values at a time: XLA's
    temporary buffers for 64 chunks are those for 4 (without rematerialising the chunk
    body they grow with the chunks, 13x here)."""
    ana = Analysis(small_config.model_copy(update={"chunk_size": 1024, "gradient": "fused"}),
                   ROOT / "configs", progress=False)
    p0 = ana.initial_params()
    one = ana.executor.chunks[0]

    def temporary_bytes(n_chunks):
        stacked = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct((n_chunks, *a.shape), a.dtype), one)
        compiled = jit_fused.lower(ana.executor.kernel, ana.objective_spec, ana.to_unit(p0), p0,
                                    stacked).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    few, many = temporary_bytes(4), temporary_bytes(64)
    assert many <= 1.1 * few, (few, many)


def test_sensitivity_sums_to_gradient(compiled_small):
    ana = compiled_small
    p0 = ana.initial_params()
    sens = ana.sensitivity(p0)
    g = jax.grad(lambda th: ana.objective(dict(p0, **th)))({n: p0[n] for n in ana.trainable})
    for n in ana.trainable:
        assert set(sens[n]) == {"signal_region/ttbar", "signal_region/wjets"}
        assert sum(sens[n].values()) == pytest.approx(float(g[n]), rel=1e-8, abs=1e-12)


def test_sensitivity_takes_the_last_steps_gradient_in_yields(compiled_small, monkeypatch):
    """At the last step's inputs (the final cuts, where their unit-box coordinates map back
    to themselves), ∂loss/∂yields is that step's, bit for bit (no step more); elsewhere it
    is computed."""
    ana = compiled_small
    ex, p0 = ana.executor, ana.initial_params()
    u = ana.to_unit(ana.from_unit(ana.to_unit(p0) * 0.75, p0))  # maps back to itself
    assert np.asarray(ana.to_unit(ana.from_unit(u, p0))).tobytes() == np.asarray(u).tobytes()

    def step_at(v):  # what a step at v computes
        return jit_fused(ex.kernel, ana.objective_spec, v, p0, ex.chunks.stacked)[2]

    calls = []
    monkeypatch.setattr(held, "jit_fused", lambda *a: calls.append(a) or jit_fused(*a))
    ana.loss_and_grad(u, p0)
    reused = ex.loss_gradient_in_yields(ana.from_unit(u, p0))
    assert len(calls) == 1  # the step's only
    flat, tree = jax.tree_util.tree_flatten(reused)
    expected, expected_tree = jax.tree_util.tree_flatten(step_at(u))
    assert tree == expected_tree
    for a, b in zip(flat, expected, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    other = ana.from_unit(u * 0.5, p0)
    computed = jax.tree_util.tree_leaves(ex.loss_gradient_in_yields(other))
    assert len(calls) == 2
    for a, b in zip(computed, jax.tree_util.tree_leaves(step_at(ana.to_unit(other))),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_same_parameters_is_bitwise(compiled_small):
    p0 = compiled_small.initial_params()
    name = compiled_small.trainable[0]
    assert same_parameters(p0, dict(p0))
    assert same_parameters(p0, {k: jnp.array(v) for k, v in p0.items()})
    assert not same_parameters(p0, dict(p0, **{name: p0[name] + 1e-12}))
    assert not same_parameters(dict(p0, **{name: jnp.float64(0.0)}),
                               dict(p0, **{name: -jnp.float64(0.0)}))  # -0.0 is not 0.0
    assert not same_parameters(p0, dict(p0, **{name: float(p0[name])}))  # a type of its own
    assert not same_parameters(p0, {k: v for k, v in p0.items() if k != name})


def test_device_option(small_config):
    cpu = Analysis(small_config.model_copy(update={"device": "cpu", "chunk_size": 2048}),
                   ROOT / "configs", progress=False)
    p0 = cpu.initial_params()
    assert cpu.executor.chunks[0]["weight"].devices() == {jax.devices("cpu")[0]}
    assert np.isfinite(float(cpu.loss_and_grad(cpu.to_unit(p0), p0)[0]))
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ConfigError, match="device: 'gpu': JAX finds no such device"):
            Analysis(small_config.model_copy(update={"device": "gpu"}), ROOT / "configs",
                     progress=False)
