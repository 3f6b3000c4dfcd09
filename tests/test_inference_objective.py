"""The median expected upper limit as a differentiable objective: equal to pyhf's, with
derivatives (implicit, at the root CLs = level) equal to finite differences in float64."""

from __future__ import annotations

import jax
import numpy as np
import pyhf
import pytest
from conftest import ROOT
from scipy.optimize import brentq

from diffana.stats import Model, expected_upper_limit

SPEC = {"channels": [{"name": "SR", "samples": [
    {"name": "signal", "data": [3.0, 6.0, 2.5],
     "modifiers": [{"name": "mu", "type": "normfactor", "data": None},
                   {"name": "sig_theory", "type": "normsys", "data": {"hi": 1.05, "lo": 0.96}}]},
    {"name": "bkg", "data": [50.0, 30.0, 8.0],
     "modifiers": [{"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}},
                   {"name": "stat", "type": "staterror", "data": [3.0, 2.0, 1.0]},
                   {"name": "shape", "type": "histosys",
                    "data": {"hi_data": [53.0, 30.5, 7.6], "lo_data": [47.5, 29.0, 8.3]}}]},
]}]}


@pytest.fixture(scope="module")
def model():
    return Model(SPEC)


@pytest.fixture(scope="module")
def limit():
    return jax.jit(expected_upper_limit, static_argnums=(0, 2))


@pytest.mark.long  # 20 s: pyhf's limit (.ci/run runs it)
def test_equals_pyhf_expected_median_limit(model, limit):
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=1e-8))
    pmodel = pyhf.Model(SPEC, poi_name="mu")
    pars = np.asarray(pmodel.config.suggested_init(), dtype=float)
    pars[pmodel.config.poi_index] = 0.0
    data = pmodel.expected_data(pars)
    for level in (0.05, 0.1):
        # the root of pyhf's median expected CLs (its toms748_scan cannot bracket the median
        # on Asimov data, where it equals the observed limit)
        expected = brentq(lambda mu, level=level: float(pyhf.infer.hypotest(
            mu, data, pmodel, test_stat="qtilde", return_expected=True)[1]) - level,
            0.1, 10.0, xtol=1e-12)
        assert float(limit(model, model.templates(), level)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.long  # 25 s: finite differences of the expected limit (.ci/run runs it)
def test_gradient_equals_finite_differences(model, limit):
    templates = model.templates()
    grad = jax.jit(jax.grad(expected_upper_limit, argnums=1), static_argnums=(0, 2))(
        model, templates, 0.05)
    eps = 1e-5
    checked = 0
    for sample, key in (("signal", "data"), ("bkg", "data"), ("bkg", "stat")):
        for i in range(3):
            def shifted(delta, sample=sample, key=key, i=i):
                t = jax.tree_util.tree_map(lambda x: x, templates)
                leaf = t["SR"][sample]
                if key == "data":
                    leaf["data"] = leaf["data"].at[i].add(delta)
                else:
                    leaf["staterror"]["stat"] = leaf["staterror"]["stat"].at[i].add(delta)
                return float(limit(model, t, 0.05))

            numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
            leaf = grad["SR"][sample]
            ours = leaf["data"][i] if key == "data" else leaf["staterror"]["stat"][i]
            assert float(ours) == pytest.approx(numeric, rel=1e-5, abs=1e-9), (sample, key, i)
            checked += 1
    # a larger signal lowers the limit; a larger background raises it
    assert all(float(g) < 0 for g in grad["SR"]["signal"]["data"])
    assert all(float(g) > 0 for g in grad["SR"]["bkg"]["data"])
    assert checked == 9


@pytest.mark.long  # 25 s: both modes compiled (.ci/run runs it)
def test_forward_mode_equals_reverse_mode(model):
    templates = model.templates()
    direction = jax.tree_util.tree_map(lambda x: np.full(np.shape(x), 0.3), templates)
    _, forward = jax.jit(lambda t, d: jax.jvp(lambda u: expected_upper_limit(model, u), (t,),
                                              (d,)))(templates, direction)
    reverse = jax.jit(jax.grad(lambda t: expected_upper_limit(model, t)))(templates)
    dot = sum(float(np.sum(np.asarray(g) * np.asarray(d))) for g, d in zip(
        jax.tree_util.tree_leaves(reverse), jax.tree_util.tree_leaves(direction), strict=True))
    assert float(forward) == pytest.approx(dot, rel=1e-9)


def test_limit_config_uses_the_objective():
    from diffana.config import load

    cfg = load(ROOT / "configs" / "ttbar_vs_wjets_limit.yaml")
    assert cfg.objective.kind == "expected_upper_limit" and cfg.objective.level == 0.05
