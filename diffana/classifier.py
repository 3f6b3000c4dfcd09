"""A classifier's loss as sums over events: the binary cross-entropy of a score.

The event-weighted binary cross-entropy of scores ``s`` in (0, 1), with label 1 for the
signal and 0 for the background, is a sum over events. Each event contributes the three
columns of :func:`terms`, ``(−log s, −log(1 − s), 1)``, times its weight; summed per sample,
these add over chunks like the histograms' yields do, and :func:`cross_entropy` turns the
per-sample sums into the loss:

``BCE = [Σ_signal w·(−log s) + Σ_background w·(−log(1 − s))] / Σ w``

(``balanced``: each class's sum divided by its own total weight, the two then averaged, so
that each class counts as much as the other whatever their yields).

Example:
    >>> import numpy as np
    >>> sums = {"sig": np.array([0.2, 3.0, 2.0]), "bkg": np.array([4.0, 0.5, 6.0])}
    >>> float(cross_entropy(sums, ["sig"]))  # (0.2 + 0.5) / 8
    0.0875
    >>> float(cross_entropy(sums, ["sig"], balanced=True))  # (0.2 / 2 + 0.5 / 6) / 2
    0.09166666666666667
"""

from __future__ import annotations

import jax.numpy as jnp

from diffana.histogram import weighted_sums

#: A score is clipped to [EPS, 1 − EPS] before its logarithms: a sigmoid saturates to
#: exactly 0 or 1 in float64 beyond a logit of about ±37, where −log would be infinite (and
#: its gradient NaN); clipped, an event's loss is at most −log(EPS) ≈ 27.6.
EPS = 1e-12


def terms(score):
    """``(events, 3)``: ``−log s``, ``−log(1 − s)`` and 1 of each event's score ``s``."""
    s = jnp.clip(score, EPS, 1.0 - EPS)
    return jnp.stack([-jnp.log(s), -jnp.log1p(-s), jnp.ones_like(s)], axis=-1)


def sums(score, weight, slots=None, num_slots: int = 1, block: int | None = None):
    """``Σ w·(−log s), Σ w·(−log(1 − s)), Σ w`` of these events: ``(3,)``, or by slot as
    :func:`diffana.histogram.weighted_sums` sorts them (``(blocks, slots, 3)``)."""
    return weighted_sums(weight, terms(score), slots, num_slots, block)


def cross_entropy(per_sample: dict, signal: list[str], balanced: bool = False):
    """The binary cross-entropy of the per-sample :func:`sums` (``{sample: (3,)}``), the
    ``signal`` samples labelled 1 and the others 0, normalised by the total weight (or, with
    ``balanced``, each class by its own)."""
    sig = sum(v for s, v in per_sample.items() if s in signal)
    bkg = sum(v for s, v in per_sample.items() if s not in signal)
    if balanced:
        return 0.5 * (sig[0] / sig[2] + bkg[1] / bkg[2])
    return (sig[0] + bkg[1]) / (sig[2] + bkg[2])
