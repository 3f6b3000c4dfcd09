"""Histograms: the differentiable KDE estimate and the hard fill through ``hist``.

The KDE histogram spreads each event over the bins with a Gaussian kernel of width
``bandwidth``: bin ``k`` receives ``w · [Φ((e_{k+1} - x)/h) - Φ((e_k - x)/h)]``. Its limit
``h → 0`` is the ordinary weighted histogram. Kernel mass outside the first and last edge
is not counted (like the flow bins of the hard histogram, which the model does not use).

``relaxed.hist`` has no event weights and no sum of squared weights, which the MC
statistical uncertainty needs; hence this module.

Example:
    >>> import jax.numpy as jnp
    >>> from diffana.histogram import kde_histogram
    >>> y, w2 = kde_histogram(jnp.array([0.5, 1.5]), jnp.array([1.0, 2.0]),
    ...                       jnp.array([0.0, 1.0, 2.0]), 1e-6)
    >>> [float(v) for v in y]
    [1.0, 2.0]
"""

from __future__ import annotations

import functools
import numbers

import hist
import jax
import jax.numpy as jnp
import numpy as np

_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def kde_histogram(x, weights, edges, bandwidth, slots=None, num_slots: int = 1,
                  block: int | None = None):
    """Weighted KDE histogram and its sum of squared weights per bin.

    Args:
        x: per-event observable, shape ``(events,)``.
        weights: per-event weights (normalisation × soft selection), shape ``(events,)``,
            or ``(sets, events)`` for several weight sets of the same events.
        edges: bin edges, shape ``(bins + 1,)``: constants, or traced (trainable edges,
            :func:`trainable_edges`: then differentiated, by autodiff through the kernel).
        bandwidth: Gaussian kernel width, in the units of ``x``. A number is a constant
            (the derivatives in ``x`` and ``weights`` then come from one rule that evaluates
            the kernel once, with constant edges); an array may be differentiated too.
        slots: optional per-event index in ``[0, num_slots)`` within its block of ``block``
            consecutive events (default: all events one block): events of several samples
            in one array, histogrammed apart; an index out of range drops the event.

    Returns:
        ``(yields, sumw2)``, each of shape ``(bins,)`` (``(sets, bins)``; with ``slots``
        ``(blocks, num_slots, [sets,] bins)``): ``Σ w·p_k`` and ``Σ (w·p_k)²`` with ``p_k``
        the kernel fraction in bin ``k``.
    """
    if isinstance(bandwidth, numbers.Real) and not isinstance(edges, jax.core.Tracer):
        edges = jnp.asarray(edges)
        return _kde_constant_bandwidth(x, weights, edges, slots, float(bandwidth), num_slots,
                                       block)
    return _kde(x, weights, jnp.asarray(edges), slots, bandwidth, num_slots, block)


def _cdf(x, edges, bandwidth):
    """``(z, Φ(z))`` at each event × edge, ``z = (edge - x) / h``."""
    z = (edges[None, :] - x[:, None]) / bandwidth
    # Φ(z) = erfc(-z/√2)/2 is accurate in float64 over the whole range, in both tails;
    # jax.scipy.special.ndtr evaluates erf and erfc everywhere and selects (1.5× the cost).
    return z, 0.5 * jax.lax.erfc(-_SQRT_HALF * z)


def _differences(values):
    """``values[:, k+1] - values[:, k]`` for each bin ``k``, as a product with the ±1
    difference matrix: the same numbers as the subtraction (one rounding; the other terms
    are exact zeros), but XLA then evaluates the kernel once into one array, and each
    difference once. With slices, XLA (CPU) splits erfc into pieces and finishes it again
    in each consumer (the fractions, their squares, their products with the slopes): the
    step is memory-bound, and the reference benchmark's gradient step took three times as
    long (``benchmarks/README.md``). Evaluating the kernel only at the edges within reach
    of each event (Φ rounds to 1 beyond ~8.3 bandwidths above it and is below 1e-19 beyond
    9 below it), with the window's values gathered or selected into place, measured slower
    on the CPU: the index work costs more than the erfc it saves, once erfc is evaluated
    once. No library does this: it works around how XLA fuses, for this estimator.
    """
    n_edges = values.shape[1]
    d = np.zeros((n_edges, n_edges - 1))
    d[np.arange(n_edges - 1), np.arange(n_edges - 1)] = -1.0
    d[np.arange(1, n_edges), np.arange(n_edges - 1)] = 1.0
    return values @ jnp.asarray(d, values.dtype)


def _sums(weights, frac, slots, num_slots: int, block: int | None):
    """``Σ_events weights × frac`` per bin: ``(sets, bins)``, or per block and slot."""
    if slots is None:
        return weights @ frac
    # The slots become extra weight sets of a batched matrix product per block: with blocks
    # holding one or two samples this costs about twice the plain histogram, where a segment
    # sum over events × sets × bins costs ten times (CPU).
    n_events, n_bins = frac.shape
    block = block or n_events
    w = jnp.atleast_2d(weights).reshape(-1, n_events // block, block)  # (sets, blocks, ev)
    onehot = jax.nn.one_hot(slots, num_slots, dtype=frac.dtype).reshape(-1, block, num_slots)
    ws = jnp.einsum("bes,mbe->bsme", onehot, w)  # (blocks, slots, sets, ev)
    ws = ws.reshape(ws.shape[0], -1, block)
    f = frac.reshape(-1, block, n_bins)
    shape = (ws.shape[0], num_slots, *jnp.shape(weights)[:-1], n_bins)
    return jnp.matmul(ws, f).reshape(shape)


def weighted_sums(weights, values, slots=None, num_slots: int = 1, block: int | None = None):
    """``Σ_events weights × values`` per column of ``values`` (``(events, columns)``): the
    sums a histogram makes of its bin fractions, of any per-event values, by slot as
    :func:`kde_histogram` sorts events (``(blocks, slots, [sets,] columns)``)."""
    return _sums(weights, values, slots, num_slots, block)


def _kde(x, weights, edges, slots, bandwidth, num_slots, block):
    _, cdf = _cdf(x, edges, bandwidth)
    frac = _differences(cdf)
    return (_sums(weights, frac, slots, num_slots, block),
            _sums(weights * weights, frac * frac, slots, num_slots, block))


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _kde_constant_bandwidth(x, weights, edges, slots, bandwidth, num_slots, block):
    return _kde(x, weights, edges, slots, bandwidth, num_slots, block)


@_kde_constant_bandwidth.defjvp
def _kde_constant_bandwidth_jvp(bandwidth, num_slots, block, primals, tangents):
    """The histogram's derivative written out: ``∂p_k/∂x = -(φ(z_{k+1}) - φ(z_k)) / h``.

    Autodiff through the kernel would carry every tangent through the events × edges
    arrays of Φ and of the bin fractions; here the kernel and its slope are evaluated once,
    and each tangent costs a few matrix products over the events (1.8× faster under
    ``jacfwd`` with three parameters, 1.3× in reverse mode). The rule is itself
    differentiable (higher orders), and linear in the tangents (reverse mode). The edges
    are constants here (with a constant bandwidth; an array bandwidth differentiates them).
    """
    x, weights, edges, slots = primals
    dx, dweights = tangents[:2]
    z, cdf = _cdf(x, edges, bandwidth)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    frac = _differences(cdf)
    slope = _differences(pdf) / -bandwidth  # ∂frac/∂x
    w2 = weights * weights
    sums = functools.partial(_sums, slots=slots, num_slots=num_slots, block=block)
    moved = weights * dx  # each event's weight times its move, per weight set
    primal = (sums(weights, frac), sums(w2, frac * frac))
    tangent = (sums(dweights, frac) + sums(moved, slope),
               sums(2.0 * weights * dweights, frac * frac) + sums(2.0 * weights * moved,
                                                                  frac * slope))
    return primal, tangent


def trainable_edges(widths, low: float, high: float):
    """Bin edges from unbounded parameters, one per bin: ``low``, then
    ``low + (high − low) · cumsum(softmax(widths))`` (the inner edges), then ``high``. Every
    parameter value gives strictly increasing edges between fixed ``low`` and ``high``
    (a bin may narrow, never close); adding a constant to every parameter changes nothing.

    Example:
        >>> [round(float(e), 6) for e in trainable_edges(width_parameters([0, 1, 3]), 0, 3)]
        [0.0, 1.0, 3.0]
    """
    inner = low + (high - low) * jnp.cumsum(jax.nn.softmax(widths))[:-1]
    return jnp.concatenate([jnp.full(1, low, inner.dtype), inner, jnp.full(1, high, inner.dtype)])


def width_parameters(edges) -> np.ndarray:
    """The parameters of :func:`trainable_edges` that give ``edges``: the logarithms of the
    bins' widths as fractions of the whole range."""
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    return np.log(widths / widths.sum())


def empty_histogram(edges, label: str = "x") -> hist.Hist:
    """An empty weighted ``hist.Hist`` (values and variances ``Σw²``) on these bin edges."""
    return hist.Hist(hist.axis.Variable(np.asarray(edges), name="x", label=label),
                     storage=hist.storage.Weight())


def hard_histogram(x, weights, edges, label: str = "x", into: hist.Hist | None = None) -> hist.Hist:
    """The ordinary weighted histogram (values and variances ``Σw²``) as a ``hist.Hist``.

    ``into``: a histogram on these edges to fill further (events that come in parts fill
    one histogram in order, the same sums as one fill of them all).
    """
    h = empty_histogram(edges, label) if into is None else into
    h.fill(x=np.asarray(x), weight=np.asarray(weights))
    return h
