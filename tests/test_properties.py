"""Property tests: the soft operations against their hard limits; the loader on mutated configs."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from conftest import default_config_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffana.config import load, load_dict
from diffana.exceptions import ConfigError
from diffana.soft import at_least, exactly, soft_above, soft_and, soft_below, soft_or

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- soft operations ------------------------------------------------------------------------

values = st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=8)
thresholds = st.floats(-1e4, 1e4)
temperatures = st.floats(1e-6, 1e3)
unit_weights = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5)
counts = st.lists(st.integers(0, 12), min_size=1, max_size=8)

HARD_TEMPERATURE = 1e-6
MARGIN = 1e-3  # |x - threshold| / HARD_TEMPERATURE > 1000: the sigmoid is 0 or 1 in float64


def array(xs):
    return jnp.asarray(xs, dtype=jnp.float64)


@SETTINGS
@given(values, thresholds, temperatures)
def test_soft_cuts_are_weights(xs, threshold, temperature):
    x = array(xs)
    for cut in (soft_above, soft_below):
        w = np.asarray(cut(x, threshold, temperature))
        assert w.dtype == np.float64
        assert np.all((w >= 0.0) & (w <= 1.0))


@SETTINGS
@given(values, thresholds)
def test_soft_cuts_hard_limit(xs, threshold):
    x = np.asarray(xs)
    far = x[np.abs(x - threshold) > MARGIN]
    for cut, passes in ((soft_above, far > threshold), (soft_below, far < threshold)):
        np.testing.assert_array_equal(cut(array(far), threshold, HARD_TEMPERATURE), passes)
    # hard=True is the boolean comparison, at the threshold too (XLA on CPU flushes subnormal
    # differences to zero, so those are left out)
    x = np.append(x, threshold)
    x = x[(np.abs(x - threshold) >= np.finfo(np.float64).tiny) | (x == threshold)]
    np.testing.assert_array_equal(soft_above(array(x), threshold, 1.0, hard=True), x > threshold)
    np.testing.assert_array_equal(soft_below(array(x), threshold, 1.0, hard=True), x < threshold)


@SETTINGS
@given(values, thresholds, thresholds, temperatures)
def test_soft_cuts_monotonic_in_threshold(xs, c1, c2, temperature):
    low, high = sorted((c1, c2))
    x = array(xs)
    assert np.all(np.asarray(soft_above(x, low, temperature))
                  >= np.asarray(soft_above(x, high, temperature)))
    assert np.all(np.asarray(soft_below(x, low, temperature))
                  <= np.asarray(soft_below(x, high, temperature)))


@SETTINGS
@given(counts, st.integers(0, 10), st.floats(1e-3, 10.0))
def test_soft_counts(ns, n, temperature):
    k = np.asarray(ns)
    for soft, hard in ((at_least, k >= n), (exactly, k == n)):
        w = np.asarray(soft(array(k), n, temperature))
        assert np.all((w >= 0.0) & (w <= 1.0))
        np.testing.assert_array_equal(soft(array(k), n, temperature, hard=True), hard)
        np.testing.assert_array_equal(soft(array(k), n, HARD_TEMPERATURE), hard)
    # requiring more objects never weighs an event more
    assert np.all(np.asarray(at_least(array(k), n, temperature))
                  >= np.asarray(at_least(array(k), n + 1, temperature)))


@SETTINGS
@given(st.lists(unit_weights, min_size=1, max_size=4).map(
    lambda ws: [w[:min(map(len, ws))] for w in ws]))
def test_soft_and_or(weights):
    ws = [array(w) for w in weights]
    both, either = np.asarray(soft_and(ws)), np.asarray(soft_or(ws))
    stacked = np.asarray(weights)
    tolerance = 1e-12
    assert np.all((both >= 0.0) & (both <= stacked.min(axis=0) + tolerance))
    assert np.all((either <= 1.0) & (either >= stacked.max(axis=0) - tolerance))
    boolean = stacked > 0.5
    masks = [array(b) for b in boolean]
    np.testing.assert_array_equal(soft_and(masks), boolean.all(axis=0))
    np.testing.assert_array_equal(soft_or(masks), boolean.any(axis=0))


# --- the loader on mutated configurations ---------------------------------------------------

BASE = default_config_dict()
NAMES = ["ttbar", "wjets", "jets", "bjets", "leptons", "ht", "lepton_pt", "jet_pt_min", "mu",
         "signal_region", "pt", "adam", "sum", "normsys", "events", "compiled"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(max_size=8), st.sampled_from(NAMES))
random_values = st.one_of(scalars, st.lists(scalars, max_size=3),
                          st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(NAMES)),
                                          scalars, max_size=3))
# any key but imports, which would import the named modules
new_keys = st.one_of(st.text(max_size=10), st.integers(), st.sampled_from(NAMES)).filter(
    lambda k: k != "imports")


def containers(node, path=()):
    """Every mapping and list in the configuration, with its path."""
    if isinstance(node, (dict, list)):
        yield path, node
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            yield from containers(value, (*path, key))


@st.composite
def mutated_configs(draw):
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        _, node = draw(st.sampled_from(list(containers(data))))
        operation = draw(st.sampled_from(["delete", "replace", "insert"]))
        if operation == "insert" and isinstance(node, dict):
            node[draw(new_keys)] = draw(random_values)
        elif operation == "insert":
            node.insert(draw(st.integers(0, len(node))), draw(random_values))
        elif node:
            key = draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            if operation == "delete":
                del node[key]
            else:
                node[key] = draw(random_values)
    return data


@SETTINGS
@given(mutated_configs())
def test_mutated_config_loads_or_says_why(data):
    try:
        load_dict(data, source="fuzz.yaml")
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message and message.startswith("fuzz.yaml: "), message


YAML_PIECES = ["samples:", "  a:", "  - x", "{", "[", "]", ": ", "!!str", "&a", "*a", "<<: *a",
               "\t", "'", "a: 1", "a: 2", "\n"]


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=60),
                 st.lists(st.sampled_from(YAML_PIECES), max_size=12).map("".join)))
def test_any_text_loads_or_says_why(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load(path)
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message and message.startswith(str(path)), message
