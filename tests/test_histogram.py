"""KDE histograms: gradients, the hard limit, and the hard fill through hist."""

from __future__ import annotations

import functools

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
    # compiled whole (as the engines use it): op by op, each small operation compiles alone
    check_grads(jax.jit(lambda x, w: kde_histogram(x, w, EDGES, 40.0)), (X[:50], W[:50]),
                order=2, modes=("fwd", "rev"))
    check_grads(jax.jit(lambda h: kde_histogram(X, W, EDGES, h)), (jnp.asarray(40.0),), order=1)


def test_kde_with_slots_and_weight_sets_gradients():
    slots = jnp.asarray(RNG.integers(0, 3, 64))  # 2 is out of range for num_slots=2: dropped
    w = jnp.stack([W[:64], 0.5 * W[:64] ** 2])
    check_grads(jax.jit(lambda x, w: kde_histogram(x, w, EDGES, 40.0, slots, 2, 16)),
                (X[:64], w), order=2, modes=("fwd", "rev"))


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
    for a, b in zip(jax.tree.leaves(jax.jit(jax.jacfwd(ours))(theta)),
                    jax.tree.leaves(jax.jit(jax.jacfwd(theirs))(theta)), strict=True):
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


# --- against the evaluation it replaced (slices of Φ for the fractions) ------------------------

_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def _reference_sums(weights, frac, slots, num_slots, block):
    if slots is None:
        return weights @ frac
    n_events, n_bins = frac.shape
    block = block or n_events
    w = jnp.atleast_2d(weights).reshape(-1, n_events // block, block)
    onehot = jax.nn.one_hot(slots, num_slots, dtype=frac.dtype).reshape(-1, block, num_slots)
    ws = jnp.einsum("bes,mbe->bsme", onehot, w).reshape(n_events // block, -1, block)
    shape = (ws.shape[0], num_slots, *jnp.shape(weights)[:-1], n_bins)
    return jnp.matmul(ws, frac.reshape(-1, block, n_bins)).reshape(shape)


def _reference_kde(x, weights, edges, slots, bandwidth, num_slots, block):
    """The KDE as it was: the fractions as slices of Φ at every edge for every event."""
    z = (edges[None, :] - x[:, None]) / bandwidth
    cdf = 0.5 * jax.lax.erfc(-_SQRT_HALF * z)
    frac = cdf[:, 1:] - cdf[:, :-1]
    return (_reference_sums(weights, frac, slots, num_slots, block),
            _reference_sums(weights * weights, frac * frac, slots, num_slots, block))


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _reference_constant(x, weights, edges, slots, bandwidth, num_slots, block):
    return _reference_kde(x, weights, edges, slots, bandwidth, num_slots, block)


@_reference_constant.defjvp
def _reference_constant_jvp(bandwidth, num_slots, block, primals, tangents):
    x, weights, edges, slots = primals
    dx, dweights = tangents[:2]
    z = (edges[None, :] - x[:, None]) / bandwidth
    cdf = 0.5 * jax.lax.erfc(-_SQRT_HALF * z)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    frac = cdf[:, 1:] - cdf[:, :-1]
    slope = (pdf[:, :-1] - pdf[:, 1:]) / bandwidth
    sums = functools.partial(_reference_sums, slots=slots, num_slots=num_slots, block=block)
    moved = weights * dx
    primal = (sums(weights, frac), sums(weights * weights, frac * frac))
    tangent = (sums(dweights, frac) + sums(moved, slope),
               sums(2.0 * weights * dweights, frac * frac)
               + sums(2.0 * weights * moved, frac * slope))
    return primal, tangent


def _reference_histogram(x, weights, edges, bandwidth, slots=None, num_slots=1, block=None):
    edges = jnp.asarray(edges)
    if isinstance(bandwidth, float):
        return _reference_constant(x, weights, edges, slots, bandwidth, num_slots, block)
    return _reference_kde(x, weights, edges, slots, bandwidth, num_slots, block)


def _assert_equal_to_reference(ours, theirs):
    """Equal to 1e-12 relative, each entry against the largest of its array (a bin's
    derivative can cancel to round-off of its terms, in both evaluations)."""
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)


# events inside, at the edges, just outside and far outside the range (1.8e4 is 400
# bandwidths above the last edge; -300 is 7.5 below the first)
WIDE_X = jnp.concatenate([jnp.asarray(RNG.uniform(-300.0, 1800.0, 248)),
                          jnp.asarray([0.0, 100.0, 1500.0, -20.0, 1520.0, 1.8e4, -1.8e4, 900.0])])
WIDE_W = jnp.asarray(RNG.uniform(0.1, 2.0, 256))
REF_EDGES = np.linspace(0.0, 1500.0, 16)  # the reference benchmark's binning


@pytest.mark.parametrize("slotted", [False, True])
@pytest.mark.parametrize("bandwidth", [40.0, 12.0])
def test_kde_equals_the_previous_evaluation(slotted, bandwidth):
    """Values, forward and reverse derivatives in x and weights (and second order)
    equal the previous evaluation to 1e-12, in and out of jit."""
    args = (jnp.asarray(RNG.integers(0, 3, 256)), 2, 64) if slotted else ()
    w = jnp.stack([WIDE_W, 0.3 * WIDE_W ** 2])

    def ours(x, w):
        return kde_histogram(x, w, REF_EDGES, bandwidth, *args)

    def theirs(x, w):
        return _reference_histogram(x, w, REF_EDGES, bandwidth, *args)

    _assert_equal_to_reference(ours(WIDE_X, w), theirs(WIDE_X, w))
    _assert_equal_to_reference(jax.jit(ours)(WIDE_X, w), jax.jit(theirs)(WIDE_X, w))
    for jac in (jax.jacfwd, jax.jacrev):
        _assert_equal_to_reference(jax.jit(jac(ours, argnums=(0, 1)))(WIDE_X, w),
                                   jax.jit(jac(theirs, argnums=(0, 1)))(WIDE_X, w))

    def second(f):
        return jax.grad(lambda x: jnp.sum(jnp.cos(jax.grad(
            lambda x: jnp.sum(jnp.sin(f(x, w)[0])))(x))))

    _assert_equal_to_reference(jax.jit(second(ours))(WIDE_X), jax.jit(second(theirs))(WIDE_X))


def test_kde_with_array_bandwidth_equals_the_previous_evaluation_in_edges_and_bandwidth():
    edges, h = jnp.asarray(REF_EDGES), jnp.asarray(40.0)
    grads = [jax.jacrev(lambda x, w, e, b, f=f: f(x, w, e, b), argnums=(0, 1, 2, 3))(
        WIDE_X, WIDE_W, edges, h) for f in (kde_histogram, _reference_histogram)]
    _assert_equal_to_reference(grads[0], grads[1])
    _assert_equal_to_reference(kde_histogram(WIDE_X, WIDE_W, edges, h),
                               _reference_histogram(WIDE_X, WIDE_W, edges, h))
