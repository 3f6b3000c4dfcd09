"""diffana.stats.infer against pyhf.infer (NumPy backend, scipy optimiser) and finite
differences."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pyhf  # noqa: E402
import pytest  # noqa: E402
from conftest import DATA  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from diffana.stats import Model, infer  # noqa: E402
from diffana.stats import hypotest as ht  # noqa: E402


def make_spec():
    """Two channels, every modifier type, non-integer yields, some zero-yield sample bins."""

    def histo(yields, up, down):
        return {"hi_data": [v * up for v in yields], "lo_data": [v * down for v in yields]}

    sr = {"signal": [4.0, 9.5, 6.0, 0.0], "ttbar": [40.0, 30.5, 12.25, 5.0],
          "wjets": [20.5, 6.7, 0.0, 1.5]}
    cr = {"ttbar": [100.0, 80.5, 20.0], "wjets": [30.0, 10.25, 0.0]}
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {"name": "signal", "data": sr["signal"], "modifiers": [
                        {"name": "mu", "type": "normfactor", "data": None},
                        {"name": "lumi", "type": "lumi", "data": None},
                        {"name": "signal_theory", "type": "normsys",
                         "data": {"hi": 1.1, "lo": 0.92}},
                        {"name": "staterror_SR", "type": "staterror", "data": [0.4, 0.6, 0.5, 0.0]},
                    ]},
                    {"name": "ttbar", "data": sr["ttbar"], "modifiers": [
                        {"name": "lumi", "type": "lumi", "data": None},
                        {"name": "ttbar_norm", "type": "normfactor", "data": None},
                        {"name": "jet_energy_scale", "type": "normsys",
                         "data": {"hi": 1.04, "lo": 0.95}},
                        {"name": "jet_energy_scale", "type": "histosys",
                         "data": histo(sr["ttbar"], 1.03, 0.96)},
                        {"name": "staterror_SR", "type": "staterror", "data": [2.0, 1.5, 1.1, 0.9]},
                    ]},
                    {"name": "wjets", "data": sr["wjets"], "modifiers": [
                        {"name": "wjets_shape_SR", "type": "shapesys",
                         "data": [3.0, 1.0, 0.0, 0.5]},
                        {"name": "wjets_xsec", "type": "normsys", "data": {"hi": 1.25, "lo": 0.7}},
                    ]},
                ],
            },
            {
                "name": "CR",
                "samples": [
                    {"name": "ttbar", "data": cr["ttbar"], "modifiers": [
                        {"name": "lumi", "type": "lumi", "data": None},
                        {"name": "ttbar_norm", "type": "normfactor", "data": None},
                        {"name": "jet_energy_scale", "type": "normsys",
                         "data": {"hi": 1.02, "lo": 0.97}},
                        {"name": "jet_energy_scale", "type": "histosys",
                         "data": histo(cr["ttbar"], 1.01, 0.985)},
                        {"name": "staterror_CR", "type": "staterror", "data": [3.0, 2.5, 1.2]},
                    ]},
                    {"name": "wjets", "data": cr["wjets"], "modifiers": [
                        {"name": "staterror_CR", "type": "staterror", "data": [1.0, 1.5, 0.0]},
                        {"name": "wjets_xsec", "type": "normsys", "data": {"hi": 1.25, "lo": 0.7}},
                    ]},
                ],
            },
        ],
        "parameters": [
            {"name": "lumi", "auxdata": [1.0], "sigmas": [0.017], "bounds": [[0.9, 1.1]],
             "inits": [1.0]}
        ],
    }


MODEL = Model(make_spec())
PYHF = MODEL.pyhf_model
TEMPLATES = MODEL.templates()
# Finite differences need a point off pyhf's zero-yield kinks (a staterror or shapesys
# uncertainty of exactly zero switches the constraint off): move zeros to small positive values.
SMOOTH_TEMPLATES = jax.tree_util.tree_map(lambda x: jnp.where(x == 0.0, 0.3, x), TEMPLATES)


def pyhf_pars():
    config = PYHF.config
    return config.suggested_init(), config.suggested_bounds(), config.suggested_fixed()


# One compiled function per objective, shared by the tests (compilation dominates the time).
discovery = jax.jit(infer.discovery_significance, static_argnums=0)
discovery_grad = jax.jit(jax.grad(infer.discovery_significance, argnums=1), static_argnums=0)
cls = jax.jit(infer.expected_cls, static_argnums=0)
cls_grad = jax.jit(jax.grad(infer.expected_cls, argnums=1), static_argnums=0)
poi_unc = jax.jit(infer.poi_uncertainty, static_argnums=0)
poi_unc_grad = jax.jit(jax.grad(infer.poi_uncertainty, argnums=1), static_argnums=0)


def assert_reverse_mode_matches_finite_differences(value, gradient, templates, seed, eps=1e-5):
    """<gradient, v> against a central difference of ``value`` along a random direction v
    (what check_grads(modes=("rev",)) does, with the already compiled gradient)."""
    leaves, treedef = jax.tree_util.tree_flatten(templates)
    rng = np.random.default_rng(seed)
    direction = [jnp.asarray(rng.uniform(-1.0, 1.0, np.shape(x))) for x in leaves]
    moved = lambda step: jax.tree_util.tree_unflatten(  # noqa: E731
        treedef, [x + step * v for x, v in zip(leaves, direction, strict=True)]
    )
    numerical = (value(moved(eps)) - value(moved(-eps))) / (2 * eps)
    analytic = sum(
        jnp.vdot(g, v) for g, v in zip(jax.tree_util.tree_leaves(gradient), direction, strict=True)
    )
    np.testing.assert_allclose(analytic, numerical, rtol=1e-5, atol=1e-9)


@jax.jit
def free_fit(data, templates):
    return infer.fit(MODEL, data, templates)


twice_nll = jax.jit(lambda p, d, t: -2.0 * MODEL.logpdf(p, d, t))
twice_nll_grad = jax.jit(jax.grad(lambda p, d, t: -2.0 * MODEL.logpdf(p, d, t)))
asimov = jax.jit(infer.asimov_data, static_argnums=0)


def projected_gradient(result, data, templates, fixed_mask):
    g = twice_nll_grad(result.bestfit, data, templates)
    low, high = MODEL.suggested_bounds.T
    x = np.asarray(result.bestfit)
    g = np.where(fixed_mask, 0.0, np.asarray(g))
    g = np.where((x <= low) & (g > 0), 0.0, g)
    g = np.where((x >= high) & (g < 0), 0.0, g)
    return np.max(np.abs(g))


def assert_exact_minimum_like_pyhf(result, data):
    """Converged to an exact minimum, no worse than pyhf's, at pyhf's best fit."""
    assert bool(result.converged)
    assert projected_gradient(result, data, TEMPLATES, MODEL.suggested_fixed) < 1e-8
    init, bounds, fixed = pyhf_pars()
    pyhf_best, pyhf_twice_nll = pyhf.infer.mle.fit(
        np.asarray(data), PYHF, init, bounds, fixed, return_fitted_val=True
    )
    assert float(result.twice_nll) <= float(pyhf_twice_nll) + 1e-9
    np.testing.assert_allclose(result.twice_nll, pyhf_twice_nll, rtol=1e-7)
    np.testing.assert_allclose(result.bestfit, pyhf_best, atol=2e-3)


def test_fit_reaches_the_minimum_and_beats_pyhf():
    """Observed data away from any Asimov point: the free fit lands on an exact minimum."""
    rng = np.random.default_rng(11)
    data = asimov(MODEL, TEMPLATES, 1.0)
    data = data.at[: MODEL.n_bins].multiply(jnp.asarray(rng.uniform(0.85, 1.3, MODEL.n_bins)))
    result = free_fit(data, TEMPLATES)
    assert_exact_minimum_like_pyhf(result, data)


def test_unconditional_minimum_of_asimov_data_is_the_asimov_point():
    for poi_value in (0.0, 1.0):
        data = asimov(MODEL, TEMPLATES, poi_value)
        result = free_fit(data, TEMPLATES)
        pars = infer.asimov_pars(MODEL, poi_value)
        np.testing.assert_allclose(result.bestfit, pars, atol=1e-7)
        np.testing.assert_allclose(
            result.twice_nll, twice_nll(pars, data, TEMPLATES), rtol=1e-12
        )


def test_fit_with_poi_on_its_bound_matches_pyhf_and_differentiates():
    """Signal-region observations below the background: mu_hat sits on its bound 0."""
    data = asimov(MODEL, TEMPLATES, 0.0)
    signal_region = np.arange(3, MODEL.n_bins)  # pyhf orders channels by name: CR, SR
    assert MODEL.channels == ["CR", "SR"]
    data = data.at[signal_region].multiply(0.8)
    result = free_fit(data, TEMPLATES)
    assert float(result.bestfit[MODEL.poi_index]) == 0.0
    assert_exact_minimum_like_pyhf(result, data)
    # implicit derivative of the best fit along a direction in data space, against
    # finite differences; the POI stays pinned to its bound
    direction = jnp.asarray(np.random.default_rng(3).uniform(-1.0, 1.0, data.size))
    best_fit_jvp = jax.jit(
        lambda d, v: jax.jvp(lambda e: free_fit(e, TEMPLATES).bestfit, (d,), (v,)))
    _, tangent = best_fit_jvp(data, direction)
    assert float(tangent[MODEL.poi_index]) == 0.0
    h = 1e-4
    difference = (
        free_fit(data + h * direction, TEMPLATES).bestfit
        - free_fit(data - h * direction, TEMPLATES).bestfit
    ) / (2 * h)
    np.testing.assert_allclose(tangent, difference, rtol=1e-5, atol=1e-8)


def test_a_fit_converges_where_a_projected_step_lands_on_a_bound():
    """The AGC's background-only Asimov data fitted at POI = 2 from pyhf's init: projected
    Newton steps put staterror factors on their lower bound (1e-10), where -n ln(gamma) rises
    steeply; from there Newton only doubled them per iteration, and the fit stopped at its
    100 iterations short of the minimum (-2 ln L 3331.95). Stopping short of the bound, it
    reaches the minimum that the fit started from the background-only fit reaches."""
    import json

    workspace = json.loads((DATA / "agc_workspace.json").read_text())
    model = Model(workspace)
    fits = ht.Fits(model, model.templates())
    data = np.asarray(pyhf.Workspace(workspace).data(model.pyhf_model), dtype=np.float64)
    ref = ht.reference(fits, data)
    from_init = fits.fixed_poi(ref.asimov_data, 2.0)
    from_background = fits.fixed_poi(ref.asimov_data, 2.0, init=ref.background.bestfit[0])
    assert from_init.converged[0] and from_background.converged[0]
    assert from_init.n_iter[0] < infer.MAX_ITERATIONS  # 39 (it used all 100)
    assert from_init.twice_nll[0] == pytest.approx(from_background.twice_nll[0], rel=1e-10)
    assert from_init.twice_nll[0] < 3330.0


def test_batched_fits_equal_fits_one_at_a_time():
    """The batched box fits (what an accelerator runs, 32 at a time; here 3, so the last
    batch is padded) give each fit's numbers and iterations as one fit at a time does."""
    templates = MODEL.templates()
    one, batched = ht.Fits(MODEL, templates, batch=1), ht.Fits(MODEL, templates, batch=3)
    data = np.asarray(pyhf.Model(make_spec()).expected_data(
        pyhf.Model(make_spec()).config.suggested_init()), dtype=np.float64)
    poi_values = [0.0, 0.5, 1.5, 3.0]
    a, b = one.fixed_poi(data, poi_values), batched.fixed_poi(data, poi_values)
    np.testing.assert_allclose(b.bestfit, a.bestfit, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.twice_nll, a.twice_nll, rtol=1e-12)
    np.testing.assert_array_equal(b.n_iter, a.n_iter)
    assert a.converged.all() and b.converged.all() and (a.n_iter > 0).all()


def test_discovery_significance_matches_pyhf_q0():
    data = np.asarray(asimov(MODEL, TEMPLATES, 1.0))
    init, bounds, fixed = pyhf_pars()
    q0 = pyhf.infer.test_statistics.q0(0.0, data, PYHF, init, bounds, fixed)
    z0 = discovery(MODEL, TEMPLATES)
    assert float(z0) > 1.0
    np.testing.assert_allclose(z0, np.sqrt(q0), rtol=1e-4)


def test_expected_cls_matches_pyhf_hypotest():
    data = np.asarray(asimov(MODEL, TEMPLATES, 0.0))
    for poi_value in (0.4, 1.5):  # pyhf's scipy fits dominate the time of this test
        _, expected = pyhf.infer.hypotest(poi_value, data, PYHF, test_stat="qtilde",
                                          return_expected=True)
        np.testing.assert_allclose(cls(MODEL, TEMPLATES, poi_value), expected, rtol=1e-4)
    assert float(cls(MODEL, TEMPLATES, 0.0)) == 1.0


def numerical_hessian(f, x, steps):
    n = x.size
    hessian = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.eye(n)[i] * steps[i], np.eye(n)[j] * steps[j]
            value = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (
                4 * steps[i] * steps[j]
            )
            hessian[i, j] = hessian[j, i] = value
    return hessian


def test_poi_uncertainty_matches_inverse_hessian_of_pyhf():
    free = np.flatnonzero(~MODEL.suggested_fixed)
    pars = np.asarray(infer.asimov_pars(MODEL, 1.0))
    data = np.asarray(asimov(MODEL, TEMPLATES, 1.0))

    def nll(x):
        full = pars.copy()
        full[free] = x
        return -PYHF.logpdf(full, data)[0]

    hessian = numerical_hessian(nll, pars[free], 1e-4 * np.maximum(np.abs(pars[free]), 0.1))
    poi = np.flatnonzero(free == MODEL.poi_index)[0]
    expected = np.sqrt(np.linalg.inv(hessian)[poi][poi])
    np.testing.assert_allclose(poi_unc(MODEL, TEMPLATES), expected, rtol=1e-4)


def reference_closed_form(s, b, rel):
    """The reference benchmark's expression, in NumPy."""
    sb2 = (rel * b) ** 2
    term1 = (s + b) * np.log((s + b) * (b + sb2) / (b * b + (s + b) * sb2))
    term2 = (b * b / sb2) * np.log1p(sb2 * s / (b * (b + sb2)))
    return np.sqrt(np.sum(2.0 * (term1 - term2)))


def test_closed_form_significance():
    rng = np.random.default_rng(0)
    s, b = rng.uniform(0.0, 20.0, 15), rng.uniform(1.0, 100.0, 15)
    np.testing.assert_allclose(
        infer.asimov_significance_closed_form(s, b, 0.1), reference_closed_form(s, b, 0.1),
        rtol=1e-12,
    )
    # floor: added to s and b, as the benchmark's "+ 1e-3"
    s[3], b[3] = 0.0, 0.0
    np.testing.assert_allclose(
        infer.asimov_significance_closed_form(s, b, 0.1, floor=1e-3),
        reference_closed_form(s + 1e-3, b + 1e-3, 0.1),
        rtol=1e-12,
    )
    # no background uncertainty: the limit 2((s+b) ln(1+s/b) - s)
    np.testing.assert_allclose(
        infer.asimov_significance_closed_form(5.0, 100.0, 0.0),
        np.sqrt(2 * (105.0 * np.log1p(0.05) - 5.0)),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        infer.asimov_significance_closed_form(5.0, 100.0, 0.0),
        reference_closed_form(5.0, 100.0, 1e-6),
        rtol=1e-6,
    )
    closed_form = jax.jit(lambda s, b: infer.asimov_significance_closed_form(s, b, 0.1, floor=1e-3))
    check_grads(closed_form, (jnp.asarray(s + 0.5), jnp.asarray(b + 1.0)), order=1,
                modes=("fwd", "rev"))
    assert np.all(np.isfinite(jax.grad(closed_form, argnums=(0, 1))(jnp.zeros(3), jnp.zeros(3))))


def test_discovery_significance_gradients():
    """Forward mode with check_grads; reverse mode (the jitted gradient) along a direction."""
    check_grads(lambda t: discovery(MODEL, t), (SMOOTH_TEMPLATES,), order=1, modes=("fwd",),
                eps=1e-5)
    assert_reverse_mode_matches_finite_differences(
        lambda t: discovery(MODEL, t), discovery_grad(MODEL, SMOOTH_TEMPLATES), SMOOTH_TEMPLATES,
        seed=0,
    )


def test_discovery_significance_gradient_matches_finite_differences_through_the_fit():
    gradient = discovery_grad(MODEL, TEMPLATES)
    for channel, sample, key, index in [
        ("SR", "signal", "data", 1),
        ("SR", "ttbar", "data", 0),
        ("CR", "ttbar", "data", 2),
        ("SR", "wjets", "data", 1),
        ("SR", "wjets", "shapesys", 0),
    ]:
        def moved(step, channel=channel, sample=sample, key=key, index=index):
            templates = jax.tree_util.tree_map(lambda x: x, TEMPLATES)
            leaf = templates[channel][sample]
            if key == "data":
                leaf["data"] = leaf["data"].at[index].add(step)
            else:
                leaf[key] = {k: v.at[index].add(step) for k, v in leaf[key].items()}
            return templates

        h = 1e-4
        difference = (discovery(MODEL, moved(h)) - discovery(MODEL, moved(-h))) / (2 * h)
        leaf = gradient[channel][sample]
        value = leaf["data"][index] if key == "data" else next(iter(leaf[key].values()))[index]
        np.testing.assert_allclose(value, difference, rtol=1e-6, atol=1e-10)


def test_expected_cls_and_poi_uncertainty_gradients():
    assert_reverse_mode_matches_finite_differences(
        lambda t: cls(MODEL, t, 1.0), cls_grad(MODEL, SMOOTH_TEMPLATES, 1.0), SMOOTH_TEMPLATES,
        seed=1,
    )
    assert_reverse_mode_matches_finite_differences(
        lambda t: poi_unc(MODEL, t), poi_unc_grad(MODEL, SMOOTH_TEMPLATES), SMOOTH_TEMPLATES, seed=2
    )


def test_jitted_gradient_does_not_recompile():
    """New template values (an optimiser step) reuse the compiled gradient."""
    jitted = discovery_grad(MODEL, TEMPLATES)
    size = discovery_grad._cache_size()
    moved = discovery_grad(MODEL, jax.tree_util.tree_map(lambda x: x * 1.01, TEMPLATES))
    assert discovery_grad._cache_size() == size
    assert not np.allclose(moved["SR"]["signal"]["data"], jitted["SR"]["signal"]["data"])
