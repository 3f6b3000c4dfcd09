"""Differentiating through a ragged array of records with Awkward Array + JAX.

Jets per event are a ragged (jagged) array of records. With Awkward's JAX backend,
``jax.grad``, ``jax.jvp`` and ``jax.vjp`` go straight through slicing, NumPy ufuncs and
reducers. This is diffana's ``awkward`` engine in miniature; the ``compiled`` engine does the
same on flat buffers under ``jax.jit``.

    python examples/awkward_jax_gradients.py
"""

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
ak.jax.register_and_check()  # Awkward's JAX backend (deprecated upstream; CPU only)

events = ak.Array(
    [
        {"jets": [{"pt": 85.0, "eta": 0.3}, {"pt": 41.0, "eta": -1.9}, {"pt": 28.0, "eta": 2.9}]},
        {"jets": []},
        {"jets": [{"pt": 120.0, "eta": -0.4}, {"pt": 33.0, "eta": 1.1}]},
    ]
)
jets = ak.to_backend(events.jets, "jax")


def soft_ht(pt_min):
    """Σ w·pT over central jets, with w = sigmoid((pT - pt_min) / 2 GeV)."""
    central = jets[abs(jets.eta) < 2.4]  # slicing with a ragged boolean mask
    weight = 0.5 * (1.0 + np.tanh(0.25 * (central.pt - pt_min)))  # ufuncs → jax.numpy
    return ak.to_jax(ak.sum(weight * central.pt, axis=1))  # reducer over the ragged axis


pt_min = jnp.asarray(35.0)
ht = soft_ht(pt_min)
print("soft H_T per event:", ht)

total = lambda c: jnp.sum(soft_ht(c))  # noqa: E731
print("d(Σ H_T)/d(pt_min) by jax.grad:", jax.grad(total)(pt_min))

_, tangent = jax.jvp(soft_ht, (pt_min,), (jnp.asarray(1.0),))
print("per-event d(H_T)/d(pt_min) by jax.jvp:", tangent)

_, pullback = jax.vjp(soft_ht, pt_min)
print("vjp with cotangent (1, 0, 1):", pullback(jnp.array([1.0, 0.0, 1.0]))[0])

eps = 1e-5
fd = (soft_ht(pt_min + eps) - soft_ht(pt_min - eps)) / (2 * eps)
np.testing.assert_allclose(tangent, fd, rtol=1e-6)
print("jvp agrees with finite differences")
