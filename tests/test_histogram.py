"""KDE histograms: gradients, the hard limit, and the hard fill through hist."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from diffana.histogram import hard_histogram, kde_histogram

RNG = np.random.default_rng(3)
X = jnp.asarray(RNG.uniform(0.0, 1000.0, 500))
W = jnp.asarray(RNG.uniform(0.1, 2.0, 500))
EDGES = jnp.linspace(0.0, 1000.0, 11)


def test_kde_gradients():
    check_grads(lambda x, w: kde_histogram(x, w, EDGES, 40.0), (X[:50], W[:50]), order=2,
                modes=("fwd", "rev"))
    check_grads(lambda h: kde_histogram(X, W, EDGES, h), (jnp.asarray(40.0),), order=1)


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
