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

import hist
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr


def kde_histogram(x, weights, edges, bandwidth, groups=None, num_groups: int | None = None):
    """Weighted KDE histogram and its sum of squared weights per bin.

    Args:
        x: per-event observable, shape ``(events,)``.
        weights: per-event weights (normalisation × soft selection), shape ``(events,)``,
            or ``(sets, events)`` for several weight sets of the same events.
        edges: bin edges, shape ``(bins + 1,)``.
        bandwidth: Gaussian kernel width, in the units of ``x``.
        groups: optional sorted per-event group index in ``[0, num_groups)`` (events of
            several samples in one array); out-of-range indices are dropped.

    Returns:
        ``(yields, sumw2)``, each of shape ``(bins,)`` (``(sets, bins)``; with ``groups``
        ``(num_groups, [sets,] bins)``): ``Σ w·p_k`` and ``Σ (w·p_k)²`` with ``p_k`` the kernel
        fraction in bin ``k``.
    """
    cdf = ndtr((jnp.asarray(edges)[None, :] - x[:, None]) / bandwidth)
    frac = cdf[:, 1:] - cdf[:, :-1]
    if groups is None:
        return weights @ frac, (weights * weights) @ (frac * frac)
    w = jnp.moveaxis(jnp.asarray(weights), -1, 0)[..., None]  # (events, [sets,] 1)
    f = frac.reshape(frac.shape[0], *([1] * (w.ndim - 2)), frac.shape[1])
    return (jax.ops.segment_sum(w * f, groups, num_groups, indices_are_sorted=True),
            jax.ops.segment_sum((w * f) ** 2, groups, num_groups, indices_are_sorted=True))


def hard_histogram(x, weights, edges, label: str = "x") -> hist.Hist:
    """The ordinary weighted histogram (values and variances ``Σw²``) as a ``hist.Hist``."""
    h = hist.Hist(hist.axis.Variable(np.asarray(edges), name="x", label=label),
                  storage=hist.storage.Weight())
    h.fill(x=np.asarray(x), weight=np.asarray(weights))
    return h
