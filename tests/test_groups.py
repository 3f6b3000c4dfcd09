"""Per-group optimisers (``optimiser.groups``): each part of ``u`` its own optax optimiser,
bounds per part, and a resumed loop that continues every group's state bitwise."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_mlp import mlp_config

from diffana.analysis import prepare
from diffana.config import load_dict
from diffana.exceptions import ConfigError
from diffana.optimise import group_settings, grouped, optimise

SLICES = {"cuts": slice(0, 2), "nn": slice(2, 5)}


def loss(u):
    target = jnp.array([0.3, 0.8, -2.0, 5.0, 0.5])
    return jnp.sum((u - target) ** 2 * jnp.arange(1.0, 6.0))


def test_each_group_steps_with_its_own_optimiser():
    opt = grouped({"cuts": optax.sgd(0.1), "nn": optax.sgd(0.001)},
                  SLICES)
    u = jnp.zeros(5)
    g = jnp.arange(1.0, 6.0)
    updates, _ = opt.update(g, opt.init(u), u)
    np.testing.assert_allclose(np.asarray(updates), [-0.1, -0.2, -0.003, -0.004, -0.005])


def test_weights_unbounded_cuts_in_the_unit_box():
    box = (np.array([0, 0, -np.inf, -np.inf, -np.inf]), np.array([1, 1, np.inf, np.inf, np.inf]))
    groups = {"cuts": (SLICES["cuts"], "adam", {"learning_rate": 0.05}),
              "nn": (SLICES["nn"], "adam", {"learning_rate": 0.2})}
    res = optimise(loss, jnp.full(5, 0.5), steps=400, progress=False, box=box, groups=groups)
    np.testing.assert_allclose(np.asarray(res.params), [0.3, 0.8, -2.0, 5.0, 0.5], atol=2e-2)


def test_resume_continues_every_group_bitwise():
    groups = {"cuts": (SLICES["cuts"], "adam", {"learning_rate": 0.05}),
              "nn": (SLICES["nn"], "sgd", {"learning_rate": 0.01, "momentum": 0.9})}
    box = (np.array([0, 0, -np.inf, -np.inf, -np.inf]), np.array([1, 1, np.inf, np.inf, np.inf]))
    whole = optimise(loss, jnp.full(5, 0.5), steps=8, progress=False, box=box, groups=groups)
    first = optimise(loss, jnp.full(5, 0.5), steps=4, progress=False, box=box, groups=groups)
    # the checkpoint holds both groups' states: adam's moments and sgd's momentum
    assert len(first.resume.state) >= 4
    rest = optimise(loss, None, steps=8, progress=False, box=box, groups=groups,
                    resume=first.resume)
    np.testing.assert_array_equal(np.asarray(rest.params), np.asarray(whole.params))
    assert [h[1] for h in rest.history] == [h[1] for h in whole.history]


def test_group_settings_of_a_configuration():
    data = mlp_config()
    data["optimiser"]["groups"] = {"nn_score": {"name": "adam",
                                                "options": {"learning_rate": 0.001}}}
    cfg = load_dict(data)
    space = prepare(cfg).space
    settings = group_settings(space.group_slices(), cfg.optimiser)
    assert settings == {"cuts": (slice(0, 3), "adam", {"learning_rate": 0.02}),
                        "nn_score": (slice(3, space.size), "adam", {"learning_rate": 0.001})}
    assert group_settings(space.group_slices(), load_dict(mlp_config()).optimiser) is None


def test_unknown_group_is_a_config_error():
    data = mlp_config()
    data["optimiser"]["groups"] = {"nn": {"name": "sgd", "options": {"learning_rate": 0.1}}}
    with pytest.raises(ConfigError, match=r"optimiser.groups.nn: not a parameter group "
                                          r"\(the groups: cuts, nn_score\)"):
        prepare(load_dict(data))


def test_a_group_takes_no_steps():
    data = mlp_config()
    data["optimiser"]["groups"] = {"nn_score": {"name": "sgd", "steps": 3}}
    with pytest.raises(ConfigError, match="optimiser.groups.nn_score.steps"):
        load_dict(data, source="g.yaml")


@pytest.mark.long  # 30 s: three runs (.ci/run runs it)
def test_run_with_a_network_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """A run with per-group optimisers interrupted at step 2, resumed: the same numbers and
    weights as a run never interrupted (the checkpoint holds u with the weights and every
    group's optimiser state)."""
    import json

    from conftest import whole_and_resumed, write_config

    from diffana import learned

    data = mlp_config()
    data["optimiser"].update(steps=4, groups={"nn_score": {"name": "sgd", "options": {
        "learning_rate": 0.002, "momentum": 0.9}}})
    path = write_config(tmp_path / "nn.yaml", data)
    whole, resumed = whole_and_resumed(path, tmp_path, monkeypatch)
    for key in ("objective_final", "params_final", "hard", "hard_train"):
        assert resumed[key] == whole[key], key
    np.testing.assert_array_equal(learned.load(tmp_path / "cut")["nn_score"]["weights"],
                                  learned.load(tmp_path / "whole")["nn_score"]["weights"])
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["resumed_from_steps"]
