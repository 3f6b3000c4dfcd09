"""JAX's persistent compilation cache in diffana's cache directory: on, off, and left alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT, default_config_dict
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from diffana import cli
from diffana.compilation import compilation_cache_dir, use_compilation_cache
from diffana.config import load_dict


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    """A temporary ``DIFFANA_CACHE`` and no JAX cache directory; JAX's setting restored after."""
    saved = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    jax_cache.reset_cache()
    monkeypatch.setenv("DIFFANA_CACHE", str(tmp_path))
    yield tmp_path / "jax-compilation"
    use_compilation_cache(False)
    jax.config.update("jax_compilation_cache_dir", saved)
    jax_cache.reset_cache()


def _compile_something(scale: float) -> None:
    jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) * scale)(jnp.arange(7.0)))


def _entries(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_compilations_go_to_the_cache_directory(private_cache):
    assert compilation_cache_dir() == private_cache
    assert use_compilation_cache() == private_cache
    assert use_compilation_cache() == private_cache  # idempotent
    _compile_something(2.0)
    entries = _entries(private_cache)
    assert entries
    jax.clear_caches()  # a new process, as far as compiling goes: loaded, nothing added
    _compile_something(2.0)
    assert _entries(private_cache) == entries


def test_off_leaves_the_directory_empty(private_cache):
    use_compilation_cache()
    use_compilation_cache(False)
    assert jax.config.jax_compilation_cache_dir is None
    _compile_something(3.0)
    assert _entries(private_cache) == []


def test_a_directory_given_to_jax_itself_is_kept(private_cache, tmp_path):
    own = tmp_path / "own"
    jax.config.update("jax_compilation_cache_dir", str(own))
    assert use_compilation_cache() == own
    assert use_compilation_cache(False) == own
    assert jax.config.jax_compilation_cache_dir == str(own)
    jax.config.update("jax_compilation_cache_dir", None)


def test_analysis_follows_the_configuration(private_cache):
    from diffana.analysis import Analysis

    data = default_config_dict(2_000)
    Analysis(load_dict({**data, "compilation_cache": False}, source="off"), ROOT / "configs",
             progress=False)
    assert jax.config.jax_compilation_cache_dir is None
    Analysis(load_dict(data, source="on"), ROOT / "configs", progress=False)
    assert jax.config.jax_compilation_cache_dir == str(private_cache)


def test_cli_switch(monkeypatch):
    seen = {}
    monkeypatch.setattr("diffana.run.run", lambda *a, **k: seen.update(k))
    cli.main(["run", "configs/ttbar_vs_wjets.yaml", "--no-compilation-cache"])
    assert seen["compilation_cache"] is False
    cli.main(["run", "configs/ttbar_vs_wjets.yaml"])
    assert seen["compilation_cache"] is None
