"""The probability densities of the likelihood, written as pyhf's NumPy backend writes them.

Example:
    >>> import jax.numpy as jnp
    >>> print(f"{float(poisson_logpdf(jnp.asarray(3.0), jnp.asarray(2.5))):.6f}")
    -1.542887
    >>> float(poisson_logpdf(jnp.asarray(0.0), jnp.asarray(0.0))) == 0.0  # empty, none expected
    True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RATE_FLOOR", "f64", "normal_logpdf", "poisson_logpdf"]

#: Expected rates ``<= 0`` are replaced by this value inside ``log`` (see :func:`poisson_logpdf`).
RATE_FLOOR = float(np.finfo(np.float64).tiny)


def f64(x: Any) -> jax.Array:
    """``x`` as a float64 JAX array."""
    return jnp.asarray(x, dtype=jnp.float64)


def poisson_logpdf(n: jax.Array, rate: jax.Array) -> jax.Array:
    """``n log(rate) - rate - lgamma(n + 1)`` with rates ``<= 0`` floored inside the log."""
    safe_rate = jnp.where(rate > 0.0, rate, RATE_FLOOR)
    return n * jnp.log(safe_rate) - rate - jax.scipy.special.gammaln(n + 1.0)


def normal_logpdf(x: jax.Array, mean: jax.Array, sigma: jax.Array) -> jax.Array:
    """Gaussian log density, written as pyhf's NumPy backend writes it."""
    return -jnp.log(sigma * np.sqrt(2.0 * np.pi)) - ((x - mean) / (np.sqrt(2.0) * sigma)) ** 2
