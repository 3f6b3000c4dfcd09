"""Traced functions kept across runs (``diffana.exported``): keyed by content, read back
without tracing, equal numbers, safe when damaged, off with the compilation cache."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, default_config_dict

from diffana import compilation, exported
from diffana.analysis import Analysis
from diffana.config import load_dict


@pytest.fixture
def directory(monkeypatch, tmp_path):
    """A private ``DIFFANA_CACHE`` with the traced-function cache on."""
    monkeypatch.setenv("DIFFANA_CACHE", str(tmp_path))
    compilation.use_compilation_cache(True)
    yield tmp_path / "jax-exported"
    compilation.use_compilation_cache(True)


TRACES: list[int] = []


def _scaled(n, x):
    TRACES.append(n)  # runs while tracing, never when the traced form is called
    return jnp.sin(x) * n


def _wrapped():
    return exported.persistent(jax.jit(_scaled, static_argnums=0), "test-scaled", (0,))


def test_read_back_without_tracing(directory):
    x = jnp.linspace(0.0, 1.0, 5)
    TRACES.clear()
    first = _wrapped()(3, x)
    assert TRACES == [3] and len(list(directory.glob("test-scaled-*"))) == 1
    again = _wrapped()(3, x)  # a new wrapper: as in the next run
    assert TRACES == [3]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(jnp.sin(x) * 3))
    _wrapped()(4, x)  # another static value, another shape: other keys
    _wrapped()(3, jnp.zeros(6))
    assert TRACES == [3, 4, 3] and len(list(directory.glob("test-scaled-*"))) == 3


@pytest.mark.parametrize("cache", [True, False], ids=["cache-on", "cache-off"])
def test_bound_arguments_give_the_same_calls(directory, cache):
    """bind(n, a)(x) is f(n, a, x): one trace per signature of x, the same numbers."""
    compilation.use_compilation_cache(cache)

    def offset(n, a, x):  # a function of its own: jax.jit keeps traces per function
        TRACES.append(n)
        return jnp.sin(x) * n + a

    function = exported.persistent(jax.jit(offset, static_argnums=0), f"test-offset-{cache}",
                                   (0,))
    a, x = jnp.arange(5.0), jnp.linspace(0.0, 1.0, 5)
    TRACES.clear()
    bound = function.bind(2, a)
    for y in (x, x + 1.0, np.asarray(x)):  # a NumPy array: the same signature
        np.testing.assert_array_equal(np.asarray(bound(y)), np.asarray(jnp.sin(y) * 2 + a))
    assert TRACES == [2]
    np.testing.assert_array_equal(np.asarray(bound(jnp.zeros(1))), np.asarray(a))  # broadcast
    assert TRACES == [2, 2]  # another shape of x: traced again
    with pytest.raises(ValueError, match="static"):
        function.bind()


def test_a_damaged_entry_is_traced_again(directory):
    x = jnp.arange(4.0)
    _wrapped()(2, x)
    (entry,) = directory.glob("test-scaled-*")
    entry.write_bytes(b"not an exported function")
    np.testing.assert_array_equal(np.asarray(_wrapped()(2, x)), np.asarray(jnp.sin(x) * 2))
    jax.export.deserialize(bytearray(entry.read_bytes()))  # written again, whole


def test_off_with_the_compilation_cache(directory):
    compilation.use_compilation_cache(False)
    TRACES.clear()
    _wrapped()(5, jnp.arange(3.0))
    _wrapped()(5, jnp.arange(3.0))
    assert TRACES == [5] and not directory.exists()  # jax.jit's own (in-process) trace


def test_off_compiles_once_for_fresh_and_placed_arguments(directory):
    """With the cache off, jit places the arguments itself (``in_shardings``): NumPy arrays,
    committed arrays and the function's own outputs share one compilation."""
    compilation.use_compilation_cache(False)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        f = _wrapped()
        TRACES.clear()
        x = np.arange(7.0)
        out = [f(6, x), f(6, jax.device_put(x, jax.devices()[0]))]
        out.append(f(6, out[0]))
        out.append(f(6, x))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert TRACES == [6] and len(compiles) == 1
    for y in out[1:]:
        np.testing.assert_array_equal(np.asarray(y), np.asarray(out[0]) if y is not out[2]
                                      else np.sin(np.asarray(out[0])) * 6)


def test_unreadable_static_arguments_are_traced_as_usual(directory):
    f = exported.persistent(jax.jit(lambda g, x: g(x), static_argnums=0), "test-local", (0,))
    assert float(f(lambda v: v + 1.0, jnp.float64(1.0))) == 2.0
    assert not list(directory.glob("test-local-*"))
    with pytest.raises(exported.Unreadable):
        exported.fingerprint(lambda v: v)


def test_eviction_keeps_the_bound(directory, monkeypatch):
    monkeypatch.setenv("DIFFANA_EXPORTED_CACHE_MB", "0.000001")  # every write passes it
    x = jnp.arange(2.0)
    for n in range(3):
        _wrapped()(10 + n, x)
    assert len(list(directory.glob("test-scaled-*"))) <= 1


FINGERPRINT = """
import sys
from diffana import exported
from diffana.analysis import Analysis
from diffana.config import load_dict
from conftest import ROOT, default_config_dict
ex = Analysis(load_dict(default_config_dict(2_000)), ROOT / "configs", progress=False).executor
print(exported.fingerprint(ex.kernel), exported.fingerprint(ex.objective_spec))
"""


def test_fingerprints_are_of_content_not_identity(tmp_path):
    """The same configuration in two processes (Python salts str hashes per process): the
    same fingerprints; another binning: another kernel's."""
    env = {"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin",
           "DIFFANA_CACHE": str(tmp_path)}
    outs = {tuple(subprocess.run([sys.executable, "-c", FINGERPRINT], env=env, check=True,
                           capture_output=True, text=True, cwd=ROOT).stdout.split()[-2:])
            for _ in range(2)}
    assert len(outs) == 1
    data = default_config_dict(2_000)
    ex = Analysis(load_dict(data), ROOT / "configs", progress=False).executor
    assert [exported.fingerprint(ex.kernel), exported.fingerprint(ex.objective_spec)] \
        == list(outs.pop())
    # what no traced function reads: the same key (not traced again)
    data["optimiser"]["options"] = {"learning_rate": 0.123}
    data["inference"] = {"enabled": True, "level": 0.1}
    data["name"] = "renamed"
    same = Analysis(load_dict(data), ROOT / "configs", progress=False).executor
    assert exported.fingerprint(same.kernel) == exported.fingerprint(ex.kernel)
    assert exported.fingerprint(same.objective_spec) == exported.fingerprint(ex.objective_spec)
    data["regions"]["signal_region"]["binning"]["bins"] += 1
    other = Analysis(load_dict(data), ROOT / "configs", progress=False).executor
    assert exported.fingerprint(other.kernel) != exported.fingerprint(ex.kernel)
