"""A small multilayer perceptron as plain JAX functions: a learned observable's network.

The weights of a network are one flat float64 vector (what the optimiser moves, a parameter
group named after the observable); :class:`Shape` says how it splits into layers. The
inputs are standardised, ``(x - shift) / scale`` with ``shift`` and ``scale`` (per input)
taken from the training events at the initial cuts, and the output is a sigmoid: a score in
(0, 1) per event.

Example:
    >>> shape = Shape(inputs=2, hidden=(3,))
    >>> shape.size  # (2·3 + 3) + (3·1 + 1)
    13
    >>> weights = init(shape, seed=0)
    >>> x = np.array([[0.5, -1.0], [2.0, 0.0]])
    >>> score = apply(shape, "relu", weights, x)
    >>> score.shape, bool(((score > 0) & (score < 1)).all())
    ((2,), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

#: the activations a network's hidden layers may use, by name
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu,
               "softplus": jax.nn.softplus, "sigmoid": jax.nn.sigmoid, "silu": jax.nn.silu}


@dataclass(frozen=True)
class Shape:
    """The layers of a network: ``inputs`` → ``hidden[0]`` → … → 1."""

    inputs: int
    hidden: tuple[int, ...]

    @property
    def layers(self) -> list[tuple[int, int]]:
        """``(fan in, fan out)`` of each layer."""
        sizes = [self.inputs, *self.hidden, 1]
        return list(zip(sizes[:-1], sizes[1:], strict=True))

    @property
    def size(self) -> int:
        """The number of weights (biases included)."""
        return sum(i * o + o for i, o in self.layers)


def init(shape: Shape, seed: int) -> np.ndarray:
    """Initial weights, flat: He-uniform matrices (``±√(6/fan in)``), zero biases."""
    rng = np.random.default_rng(seed)
    parts = []
    for fan_in, fan_out in shape.layers:
        limit = np.sqrt(6.0 / fan_in)
        parts += [rng.uniform(-limit, limit, size=fan_in * fan_out), np.zeros(fan_out)]
    return np.concatenate(parts).astype(np.float64)


def layers(shape: Shape, weights) -> list[tuple]:
    """``[(W, b)]`` of each layer from the flat ``weights`` (``W``: ``(fan in, fan out)``)."""
    out, at = [], 0
    for fan_in, fan_out in shape.layers:
        w = weights[at:at + fan_in * fan_out].reshape(fan_in, fan_out)
        at += fan_in * fan_out
        out.append((w, weights[at:at + fan_out]))
        at += fan_out
    return out


def logit(shape: Shape, activation: str, weights, x):
    """The network's output before the sigmoid, per event (``x``: ``(events, inputs)``,
    standardised)."""
    act = ACTIVATIONS[activation]
    h = x
    *hidden, (w_out, b_out) = layers(shape, weights)
    for w, b in hidden:
        h = act(h @ w + b)
    return (h @ w_out + b_out)[:, 0]


def apply(shape: Shape, activation: str, weights, x, shift=None, scale=None):
    """The score in (0, 1) of each event: ``sigmoid(logit((x - shift) / scale))``."""
    x = jnp.asarray(x)
    if shift is not None:
        x = (x - shift) / scale
    return jax.nn.sigmoid(logit(shape, activation, jnp.asarray(weights), x))


def standardisation(sums) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)`` of each input from weighted sums ``(Σw, Σw·x, Σw·x²)`` per input
    (shape ``(3, inputs)``): the weighted mean and standard deviation (1 where the
    deviation is 0 or undefined)."""
    sums = np.asarray(sums, dtype=np.float64)
    total = np.where(sums[0] > 0, sums[0], 1.0)
    mean = sums[1] / total
    var = np.maximum(sums[2] / total - mean**2, 0.0)
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)
