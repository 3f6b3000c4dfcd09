"""KDE histograms: gradients, the hard limit, and the hard fill through hist."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.test_util import check_grads

from diffana.histogram import _cdf, hard_histogram, kde_histogram

RNG = np.random.default_rng(3)
X = jnp.asarray(RNG.uniform(0.0, 1000.0, 500))
W = jnp.asarray(RNG.uniform(0.1, 2.0, 500))
EDGES = jnp.linspace(0.0, 1000.0, 11)


def test_kde_gradients():
    check_grads(lambda x, w: kde_histogram(x, w, EDGES, 40.0), (X[:50], W[:50]), order=2,
                modes=("fwd", "rev"))
    check_grads(lambda h: kde_histogram(X, W, EDGES, h), (jnp.asarray(40.0),), order=1)


def test_kde_with_slots_and_weight_sets_gradients():
    slots = jnp.asarray(RNG.integers(0, 3, 64))  # 2 is out of range for num_slots=2: dropped
    w = jnp.stack([W[:64], 0.5 * W[:64] ** 2])
    check_grads(lambda x, w: kde_histogram(x, w, EDGES, 40.0, slots, 2, 16), (X[:64], w),
                order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("slotted", [False, True])
def test_kde_rule_equals_autodiff_through_the_kernel(slotted):
    """The written-out derivative (constant bandwidth) against JAX differentiating the kernel
    (the same function with the bandwidth as an array), under jacfwd and vjp."""
    args = (jnp.asarray(RNG.integers(0, 2, 128)), 2, 32) if slotted else ()
    theta = jnp.asarray([1.0, 0.02, -0.3])

    def hist(t, h):
        x = X[:128] * (1.0 + t[1]) + 10.0 * t[0]
        w = jnp.stack([W[:128] * (1.0 + t[2] * X[:128] / 1000.0), W[:128] ** 2 * t[0]])
        return kde_histogram(x, w, EDGES, h, *args)

    ours, theirs = (lambda t: hist(t, 40.0)), (lambda t: hist(t, jnp.asarray(40.0)))
    for a, b in zip(jax.tree.leaves(jax.jacfwd(ours)(theta)),
                    jax.tree.leaves(jax.jacfwd(theirs)(theta)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(b))))
    y, pull = jax.vjp(ours, theta)
    _, pull_ref = jax.vjp(theirs, theta)
    cotangent = jax.tree.map(lambda v: jnp.cos(jnp.arange(v.size).reshape(v.shape)), y)
    np.testing.assert_allclose(pull(cotangent)[0], pull_ref(cotangent)[0], rtol=1e-12)


def test_gaussian_cdf_equals_scipy_ndtr_in_both_tails():
    z = np.linspace(-37.0, 37.0, 20001)
    _, cdf = _cdf(jnp.asarray(-z), jnp.zeros(1), 1.0)
    np.testing.assert_allclose(cdf[:, 0], scipy.special.ndtr(z), rtol=2e-15, atol=0.0)


def test_kde_hard_limit_equals_np_histogram_and_hist():
    y, w2 = kde_histogram(X, W, EDGES, 1e-7)
    ref, _ = np.histogram(np.asarray(X), bins=np.asarray(EDGES), weights=np.asarray(W))
    ref2, _ = np.histogram(np.asarray(X), bins=np.asarray(EDGES), weights=np.asarray(W) ** 2)
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    np.testing.assert_allclose(w2, ref2, rtol=1e-12)
    h = hard_histogram(X, W, EDGES)
    np.testing.assert_allclose(h.values(), ref, rtol=1e-12)
    np.testing.assert_allclose(h.variances(), ref2, rtol=1e-12)


def test_kde_conserves_weight_inside_range():
    x = jnp.array([500.0])
    y, _ = kde_histogram(x, jnp.array([2.0]), EDGES, 40.0)
    np.testing.assert_allclose(jnp.sum(y), 2.0, rtol=1e-12)
    assert float(jnp.max(y)) < 2.0  # spread over neighbouring bins
