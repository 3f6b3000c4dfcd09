"""Shared fixtures: float64 JAX, a private event cache, small generated samples."""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import pytest
import yaml

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
DEFAULT_CONFIG = ROOT / "configs" / "ttbar_vs_wjets.yaml"


@pytest.fixture(scope="session", autouse=True)
def _event_cache(tmp_path_factory):
    """Generated events go to a private cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DIFFANA_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def default_config_dict(events: int = 20_000) -> dict:
    """The default analysis with a small generated sample."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data = copy.deepcopy(data)
    data["generate"]["events"] = events
    return data


@pytest.fixture(scope="session")
def small_config():
    from diffana.config import load_dict

    return load_dict(default_config_dict(5_000), source="small")


@pytest.fixture(scope="session")
def compiled_small(small_config):
    from diffana.analysis import Analysis

    return Analysis(small_config, ROOT / "configs", engine="compiled", progress=False)


@pytest.fixture(scope="session")
def awkward_small(small_config):
    from diffana.analysis import Analysis

    return Analysis(small_config, ROOT / "configs", engine="awkward", progress=False)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
