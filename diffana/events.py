"""Events: reading, event weights and their normalisation, computed variations."""

from __future__ import annotations


def sample_norm(cross_section: float, luminosity: float, total: float) -> float:
    """The weight per event (or per unit genWeight) of a sample: ``σ·L/N``.

    ``total`` is the number of events the sample was generated with (or the sum of its
    generator weights); every normalisation in diffana is this one expression.
    """
    return cross_section * luminosity / total
