"""diffana against relaxed, the authority for the differentiable operations they share.

relaxed 0.4 has a KDE histogram without event weights (`relaxed.hist`), a sigmoid cut
(`relaxed.cut`) and the Fisher (Cramér–Rao) uncertainty of a model with a `logpdf`
(`relaxed.cramer_rao_uncert`). diffana does not use it at run time (see the README): its
histograms carry event weights and Σw², and its fits avoid jaxopt, which is archived.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

from diffana.histogram import kde_histogram
from diffana.soft import soft_above, soft_below
from diffana.stats import Model, poi_uncertainty
from diffana.stats.infer import asimov_data, asimov_pars

relaxed = pytest.importorskip("relaxed")

X = np.random.default_rng(7).normal(100.0, 40.0, 2_000)
EDGES = np.linspace(0.0, 250.0, 11)


@pytest.mark.parametrize("bandwidth", [5.0, 25.0])
def test_kde_with_unit_weights_is_relaxed_hist(bandwidth):
    ours, _ = kde_histogram(jnp.asarray(X), jnp.ones(len(X)), EDGES, bandwidth)
    theirs = relaxed.hist(jnp.asarray(X), jnp.asarray(EDGES), bandwidth)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-9)
    # and their derivatives in the data
    g_ours = jax.grad(lambda x: kde_histogram(x, jnp.ones(len(X)), EDGES, bandwidth)[0][3])
    g_theirs = jax.grad(lambda x: relaxed.hist(x, jnp.asarray(EDGES), bandwidth)[3])
    np.testing.assert_allclose(g_ours(jnp.asarray(X)), g_theirs(jnp.asarray(X)),
                               rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_soft_cut_is_relaxed_cut(temperature):
    x = jnp.asarray(X)
    np.testing.assert_allclose(soft_above(x, 90.0, temperature),
                               relaxed.cut(x, 90.0, 1.0 / temperature, keep="above"),
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(soft_below(x, 90.0, temperature),
                               relaxed.cut(x, 90.0, 1.0 / temperature, keep="below"),
                               rtol=1e-12, atol=1e-300)


class _Likelihood(eqx.Module):
    """diffana's model as relaxed wants it: ``logpdf(pars=dict, data)``."""

    templates: dict
    model: Model = eqx.field(static=True)

    def logpdf(self, pars, data):
        return self.model.logpdf(pars["pars"], data, self.templates)


def test_fisher_uncertainty_is_relaxed_cramer_rao():
    spec = pyhf.simplemodels.uncorrelated_background([12.0, 8.0, 3.0], [50.0, 30.0, 10.0],
                                                     [7.0, 5.0, 2.0]).spec
    model = Model(spec)
    templates = model.templates()
    assert not np.any(model.suggested_fixed)  # relaxed takes every parameter as free
    pars = asimov_pars(model, 1.0)
    data = asimov_data(model, templates, 1.0)
    theirs = relaxed.cramer_rao_uncert(_Likelihood(templates, model), {"pars": pars}, data)
    ours = poi_uncertainty(model, templates)
    np.testing.assert_allclose(float(ours), float(theirs["pars"][model.poi_index]), rtol=1e-10)
