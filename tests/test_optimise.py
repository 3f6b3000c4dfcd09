"""The optimiser loop: optax by name, bounds, tolerance, and non-finite values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from diffana.exceptions import ConfigError
from diffana.optimise import optimise


def quadratic(u):
    return jnp.sum((u - jnp.array([0.3, 1.4])) ** 2)  # optimum outside the box in u[1]


@pytest.mark.parametrize("name,options", [("adam", {"learning_rate": 0.05}),
                                          ("sgd", {"learning_rate": 0.2, "momentum": 0.5}),
                                          ("lbfgs", {})])
def test_optax_by_name_respects_bounds(name, options):
    res = optimise(quadratic, jnp.array([0.9, 0.5]), name, options, steps=200, progress=False)
    np.testing.assert_allclose(res.params, [0.3, 1.0], atol=2e-3)
    assert all(0.0 <= float(v) <= 1.0 for _, _, u in res.history for v in u)
    assert res.history[0][0] == 0 and len(res.history) == 201


def test_tolerance_stops_early():
    res = optimise(quadratic, jnp.array([0.9, 0.5]), "adam", {"learning_rate": 0.05},
                   steps=1000, tolerance=1e-10, progress=False)
    assert res.stopped == "tolerance" and len(res.history) < 1000


def test_non_finite_stops_and_keeps_last_good():
    calls = []

    def loss(u):  # (loss, gradient), turning NaN at the fifth evaluation
        calls.append(1)
        value = jnp.sum(u**2)
        return (jnp.nan if len(calls) > 4 else value), 2 * u

    res = optimise(loss, jnp.array([0.5]), "sgd", {"learning_rate": 0.1}, steps=10,
                   progress=False)
    assert res.stopped.startswith("non-finite objective at step")
    assert np.isfinite(res.loss) and np.all(np.isfinite(res.params))
    assert len(res.history) == 4


def test_bad_optimiser_options():
    with pytest.raises(ConfigError, match="optimiser.options"):
        optimise(quadratic, jnp.array([0.5, 0.5]), "adam", {"lr": 0.1}, steps=1, progress=False)
