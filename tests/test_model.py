"""diffana.stats.Model against pyhf.Model (NumPy backend), modifier by modifier."""

import copy

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pyhf  # noqa: E402
import pytest  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from diffana.stats import Model  # noqa: E402
from diffana.stats.modifiers import modifier_settings  # noqa: E402

RTOL = 1e-10

# Two channels, three samples; non-integer yields; zero-yield bins in some samples
# (SR bin 2 has no signal, SR bin 3 no ttbar, CR bin 2 no wjets, SR bin 4 is empty for all).
NOMINAL = {
    "SR": {
        "signal": [3.0, 5.5, 0.0, 1.2, 0.0],
        "ttbar": [40.0, 30.5, 12.25, 0.0, 0.0],
        "wjets": [10.5, 0.7, 4.5, 2.5, 0.0],
    },
    "CR": {"ttbar": [100.0, 80.5, 20.0], "wjets": [30.0, 10.25, 0.0]},
}
STAT_UNC = {
    "SR": {"signal": [0.3, 0.5, 0.0, 0.2, 0.0], "ttbar": [2.0, 1.5, 1.1, 0.0, 0.0]},
    "CR": {"ttbar": [3.0, 2.5, 1.2], "wjets": [1.0, 1.5, 0.0]},
}
EMPTY_BIN = 7  # SR bin 4 (pyhf orders channels by name: CR's 3 bins come first)
MODIFIER_TYPES = [
    "normfactor", "normsys", "histosys", "staterror", "shapesys", "lumi", "shapefactor"
]


def make_spec(modifier_types):
    """A two-channel spec using the given modifier types (plus the POI normfactor mu)."""
    use = set(modifier_types)
    channels = []
    for channel, samples in NOMINAL.items():
        sample_specs = []
        for sample, yields in samples.items():
            modifiers = []
            if sample == "signal":
                modifiers.append({"name": "mu", "type": "normfactor", "data": None})
            if "normfactor" in use and sample == "ttbar":
                modifiers.append({"name": "ttbar_norm", "type": "normfactor", "data": None})
            if "lumi" in use and sample != "wjets":
                modifiers.append({"name": "lumi", "type": "lumi", "data": None})
            if "normsys" in use:
                factors = {"signal": (1.08, 0.95), "ttbar": (1.05, 0.93), "wjets": (1.3, 0.6)}
                hi, lo = factors[sample]
                if channel == "CR":
                    hi, lo = hi - 0.02, lo + 0.01
                name = "wjets_xsec" if sample == "wjets" else "jet_energy_scale"
                modifiers.append({"name": name, "type": "normsys", "data": {"hi": hi, "lo": lo}})
            if "histosys" in use and sample != "signal":
                y = np.array(yields)
                shape = np.linspace(0.95, 1.08, len(y))
                modifiers.append(
                    {
                        "name": "jet_energy_scale",
                        "type": "histosys",
                        "data": {"hi_data": list(y * shape), "lo_data": list(y / shape * 0.99)},
                    }
                )
            if "staterror" in use and sample in STAT_UNC[channel]:
                modifiers.append(
                    {"name": f"staterror_{channel}", "type": "staterror",
                     "data": STAT_UNC[channel][sample]}
                )
            if "shapesys" in use and sample == "wjets":
                unc = [0.15 * v if i != 1 else 0.0 for i, v in enumerate(yields)]
                modifiers.append(
                    {"name": f"wjets_shape_{channel}", "type": "shapesys", "data": unc})
            if "shapefactor" in use and channel == "CR" and sample == "ttbar":
                modifiers.append({"name": "cr_shape", "type": "shapefactor", "data": None})
            sample_specs.append({"name": sample, "data": list(yields), "modifiers": modifiers})
        channels.append({"name": channel, "samples": sample_specs})
    spec = {"channels": channels}
    if "lumi" in use:
        spec["parameters"] = [
            {"name": "lumi", "auxdata": [1.0], "sigmas": [0.017], "bounds": [[0.9, 1.1]],
             "inits": [1.0]}
        ]
    return spec


SPECS = {name: make_spec([name]) for name in MODIFIER_TYPES}
SPECS["all"] = make_spec(MODIFIER_TYPES)


def observed_data(model):
    """Non-integer observations (main) followed by pyhf's auxdata."""
    rng = np.random.default_rng(7)
    main = np.asarray(model.pyhf_model.expected_actualdata(model.suggested_init))
    main = main * rng.uniform(0.8, 1.2, main.size) + rng.uniform(0.0, 1.5, main.size)
    main[EMPTY_BIN] = 0.0  # nothing expected, nothing observed
    return np.concatenate([main, model.pyhf_model.config.auxdata])


def random_pars(model, rng):
    """Random parameters inside the bounds; nuisance alphas also beyond |alpha| = 1."""
    low, high = model.suggested_bounds.T
    pars = rng.uniform(low, np.minimum(high, low + 2.5))
    for i in range(len(model.par_names)):
        if low[i] == -5.0:  # normsys / histosys
            pars[i] = rng.uniform(-2.5, 2.5)
    return np.where(model.suggested_fixed, model.suggested_init, pars)


@pytest.fixture(scope="module", params=sorted(SPECS))
def model(request):
    return Model(SPECS[request.param])


def test_structure_matches_pyhf(model):
    config = model.pyhf_model.config
    assert model.par_names == config.par_names
    assert model.poi_index == config.poi_index
    np.testing.assert_array_equal(model.suggested_init, config.suggested_init())
    np.testing.assert_array_equal(model.suggested_bounds, config.suggested_bounds())
    np.testing.assert_array_equal(model.suggested_fixed, config.suggested_fixed())
    np.testing.assert_allclose(model.auxdata(model.templates()), config.auxdata, rtol=RTOL)


def test_logpdf_matches_pyhf(model):
    logpdf = jax.jit(model.logpdf)
    templates = model.templates()
    data = observed_data(model)
    rng = np.random.default_rng(1)
    points = [model.suggested_init] + [random_pars(model, rng) for _ in range(4)]
    for pars in points:
        expected = model.pyhf_model.logpdf(pars, data)[0]
        assert np.isfinite(expected)
        np.testing.assert_allclose(logpdf(pars, data, templates), expected, rtol=RTOL)
        # auxiliary data away from their nominal values too
        shifted = data.copy()
        shifted[model.n_bins :] = shifted[model.n_bins :] * 1.05 + 0.01
        np.testing.assert_allclose(
            logpdf(pars, shifted, templates), model.pyhf_model.logpdf(pars, shifted)[0], rtol=RTOL
        )


def test_expected_data_matches_pyhf(model):
    templates = model.templates()
    rng = np.random.default_rng(2)
    for pars in [model.suggested_init] + [random_pars(model, rng) for _ in range(3)]:
        np.testing.assert_allclose(
            model.expected_data(pars, templates), model.pyhf_model.expected_data(pars),
            rtol=RTOL, atol=1e-12,
        )
        np.testing.assert_allclose(
            model.expected_data(pars, templates, include_auxdata=False),
            model.pyhf_model.expected_actualdata(pars),
            rtol=RTOL,
            atol=1e-12,
        )


def scaled_templates(templates, seed):
    """Every number of the spec moved by a few percent (staying positive)."""
    leaves, treedef = jax.tree_util.tree_flatten(templates)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        treedef, [leaf * rng.uniform(0.9, 1.1, np.shape(leaf)) for leaf in leaves]
    )


def test_templates_are_the_numbers_of_the_spec(model):
    """logpdf with modified templates equals pyhf on the spec written with them."""
    templates = scaled_templates(model.templates(), seed=3)
    spec = model.spec_with(templates)
    reference = pyhf.Model(spec, poi_name="mu", validate=True)
    rng = np.random.default_rng(4)
    data = np.concatenate(
        [observed_data(model)[: model.n_bins], np.asarray(model.auxdata(templates))]
    )
    np.testing.assert_allclose(model.auxdata(templates), reference.config.auxdata, rtol=RTOL)
    for pars in [model.suggested_init, random_pars(model, rng)]:
        np.testing.assert_allclose(
            model.logpdf(pars, data, templates), reference.logpdf(pars, data)[0], rtol=RTOL
        )
    # and the round trip spec -> templates -> spec is exact
    assert model.spec_with(model.templates()) == model.spec_with(model.templates(model.spec))
    roundtrip = model.templates(spec)
    for a, b in zip(jax.tree_util.tree_leaves(roundtrip), jax.tree_util.tree_leaves(templates),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def full_model():
    return Model(SPECS["all"])


def test_gradients_wrt_pars(full_model):
    templates = full_model.templates()
    data = jnp.asarray(observed_data(full_model))
    pars = jnp.asarray(random_pars(full_model, np.random.default_rng(5)))
    logpdf = jax.jit(lambda p: full_model.logpdf(p, data, templates))
    check_grads(logpdf, (pars,), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_gradients_wrt_templates(full_model):
    """Finite differences need a point off the zero-yield kinks (pyhf's rules there are
    discontinuous: a staterror width jumps to 1 when a bin's total yield reaches zero);
    the zero-yield point itself is covered by test_gradients_finite_at_zero_yields."""
    data = jnp.asarray(observed_data(full_model))
    pars = jnp.asarray(random_pars(full_model, np.random.default_rng(6)))
    templates = jax.tree_util.tree_map(lambda x: jnp.where(x == 0.0, 0.05, x),
                                       full_model.templates())
    logpdf = jax.jit(lambda t: full_model.logpdf(pars, data, t))
    check_grads(logpdf, (templates,), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_gradients_finite_at_zero_yields(full_model):
    """An empty bin (SR bin 4: no yield, no data) and zero-yield samples give finite gradients."""
    templates = full_model.templates()
    data = jnp.asarray(observed_data(full_model))
    pars = jnp.asarray(full_model.suggested_init)
    assert float(full_model.expected_actualdata(pars, templates)[EMPTY_BIN]) == 0.0
    value_and_grad = jax.jit(jax.value_and_grad(full_model.logpdf, argnums=(0, 2)))
    value, (grad_pars, grad_templates) = value_and_grad(pars, data, templates)
    np.testing.assert_allclose(value, full_model.pyhf_model.logpdf(pars, data)[0], rtol=RTOL)
    assert np.all(np.isfinite(grad_pars))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(grad_templates))
    jvp = jax.jit(lambda t: jax.jvp(lambda u: full_model.logpdf(pars, data, u), (t,), (t,))[1])
    tangent = jvp(templates)
    assert np.isfinite(tangent)


def test_zero_rate_with_data_is_floored_not_nan(full_model):
    templates = full_model.templates()
    # data where nothing is expected
    data = jnp.asarray(observed_data(full_model)).at[EMPTY_BIN].set(2.0)
    pars = jnp.asarray(full_model.suggested_init)
    value, grad = jax.jit(jax.value_and_grad(full_model.logpdf))(pars, data, templates)
    assert np.isfinite(value) and value < -1000.0
    assert np.all(np.isfinite(grad))


def _hessian_points(model, seed):
    """A random point, the same with the POI at 0 (a factor slot that is 0) and every
    parameter at its lower bound (staterror and shapesys factors at 1e-10)."""
    pars = random_pars(model, np.random.default_rng(seed))
    at_zero = pars.copy()
    at_zero[model.poi_index] = 0.0
    lowest = np.where(model.suggested_fixed, model.suggested_init, model.suggested_bounds[:, 0])
    return pars, at_zero, lowest


@pytest.mark.parametrize("codes", [None, {"normsys": "code1", "histosys": "code0"}],
                         ids=["default-codes", "code1-code0"])
def test_derivatives_equal_automatic_differentiation(model, codes):
    """Newton's gradient and Hessian, from the layout of the rates (diffana.stats.curvature),
    are jax.grad's and jax.hessian's to round-off, with every modifier type and code."""
    model = Model(model.spec, modifier_settings=modifier_settings(codes)) if codes else model
    templates = model.templates()
    data = jnp.asarray(observed_data(model))

    def twice_nll(p):
        return -2.0 * model.logpdf(p, data, templates)

    structured = jax.jit(model.twice_nll_derivatives)
    automatic = jax.jit(lambda p: (jax.grad(twice_nll)(p), jax.hessian(twice_nll)(p)))
    prepared = model.prepare(templates)
    for pars in _hessian_points(model, seed=11):
        for got, expected in zip(structured(jnp.asarray(pars), data, prepared),
                                 automatic(jnp.asarray(pars)), strict=True):
            got, expected = np.asarray(got), np.asarray(expected)
            assert np.all(np.isfinite(got))
            np.testing.assert_allclose(got, expected, rtol=0,
                                       atol=1e-12 * np.max(np.abs(expected)))


def test_derivatives_of_a_large_layout_are_differentiated(monkeypatch):
    """Beyond MAX_PRODUCTS the layout's products would take too much memory: the Hessian is
    jax.hessian's itself (bitwise; the structured one differs from it by round-off), the
    gradient jax.grad's."""
    monkeypatch.setattr("diffana.stats.curvature.MAX_PRODUCTS", 0)
    model = Model(SPECS["all"])
    templates = model.templates()
    data = jnp.asarray(observed_data(model))
    pars = jnp.asarray(random_pars(model, np.random.default_rng(12)))

    def twice_nll(p):
        return -2.0 * model.logpdf(p, data, templates)

    expected = jax.jit(lambda p: (jax.grad(twice_nll)(p), jax.hessian(twice_nll)(p)))(pars)
    got = jax.jit(model.twice_nll_derivatives)(pars, data, model.prepare(templates))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(expected[0]), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))


@pytest.mark.parametrize("large", [False, True], ids=["layout", "large-layout"])
def test_jacobian_equals_forward_differentiation(model, large, monkeypatch):
    """The expected yields' Jacobian that the Fisher matrix of poi_uncertainty reads, from
    the layout of the rates (or, beyond MAX_PRODUCTS, by jax.jacfwd itself), is jax.jacfwd's
    of expected_actualdata to round-off, with every modifier type; the yields are the same."""
    if large:
        monkeypatch.setattr("diffana.stats.curvature.MAX_PRODUCTS", 0)
        model = Model(model.spec)
    templates = model.templates()
    prepared = model.prepare(templates)
    structured = jax.jit(model.expected_and_jacobian)
    automatic = jax.jit(lambda p: (model.expected_actualdata(p, templates),
                                   jax.jacfwd(model.expected_actualdata)(p, templates)))
    for pars in _hessian_points(model, seed=13):
        for got, expected in zip(structured(jnp.asarray(pars), prepared),
                                 automatic(jnp.asarray(pars)), strict=True):
            got, expected = np.asarray(got), np.asarray(expected)
            assert got.shape == expected.shape and np.all(np.isfinite(got))
            np.testing.assert_allclose(got, expected, rtol=0,
                                       atol=1e-12 * np.max(np.abs(expected)))


def test_workspace_spec_uses_measurement():
    spec = copy.deepcopy(SPECS["all"])
    workspace = {
        "channels": spec["channels"],
        "observations": [
            {"name": c["name"],
             "data": [float(v) for v in np.sum([s["data"] for s in c["samples"]], axis=0)]}
            for c in spec["channels"]
        ],
        "measurements": [
            {"name": "meas", "config": {"poi": "ttbar_norm", "parameters": spec["parameters"]}}
        ],
        "version": "1.0.0",
    }
    model = Model(workspace)
    assert model.par_names[model.poi_index] == "ttbar_norm"
    reference = pyhf.Workspace(workspace).model()
    data = pyhf.Workspace(workspace).data(reference)
    pars = random_pars(model, np.random.default_rng(8))
    np.testing.assert_allclose(
        model.logpdf(pars, jnp.asarray(data), model.templates()), reference.logpdf(pars, data)[0],
        rtol=RTOL,
    )
    written = model.spec_with(model.templates(), observations={"SR": np.ones(5)})
    assert written["observations"][0]["data"] == [1.0] * 5
    pyhf.Workspace(written)  # validates


def test_unsupported_modifier_is_rejected():
    spec = copy.deepcopy(SPECS["normfactor"])
    spec["channels"][0]["samples"][0]["modifiers"].append(
        {"name": "x", "type": "magic", "data": None})
    with pytest.raises(ValueError, match="magic"):
        Model(spec)
