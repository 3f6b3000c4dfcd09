"""The AGC analysis on a small generated sample: gradients, hard limit, pseudodata, model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from diffana.analysis import Analysis
from diffana.config import load

SMALL = 20_000  # nominal event budget: seconds to generate, enough events in both regions


@pytest.fixture(scope="module")
def agc():
    cfg = load(ROOT / "configs" / "agc_ttbar.yaml")
    cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"events": SMALL})})
    return Analysis(cfg, ROOT / "configs", progress=False)


def test_model_has_every_agc_systematic(agc):
    names = set(agc.model.par_names)
    expected = {"ttbar_norm", "luminosity", "me_variation", "ps_variation", "ttbar_scale",
                "jet_energy_scale", "jet_energy_resolution", "wjets_scale",
                *(f"btag_np_{i}" for i in range(1, 5))}
    assert expected <= names
    assert sum(n.startswith("staterror_") for n in names) == 22  # 11 bins × 2 regions


@pytest.mark.long  # 35 s: finite differences of the AGC objective (.ci/run runs it)
def test_objective_gradient_matches_finite_differences(agc):
    """∂(expected σ of ttbar_norm)/∂cuts through every stage, against central differences."""
    p0 = agc.initial_params()
    u0 = agc.to_unit(p0) + jnp.array([0.03, -0.02, 0.05])
    loss, grad = agc.loss_and_grad(u0, p0)
    assert 0.0 < float(loss) < 1.0
    eps = 1e-5
    for i in range(len(u0)):
        e = jnp.zeros_like(u0).at[i].set(eps)
        fd = (agc.loss_and_grad(u0 + e, p0)[0] - agc.loss_and_grad(u0 - e, p0)[0]) / (2 * eps)
        assert float(grad[i]) == pytest.approx(float(fd), rel=2e-4, abs=1e-7), agc.trainable[i]


def test_hard_limit_and_pseudodata(agc):
    """Hard region weights are 0 or the sample's σ·L/N; the pseudodata is the AGC's mixture."""
    p0 = agc.initial_params()
    events = agc.region_events(p0, hard=True)
    for region in ("4j1b", "4j2b"):
        w = np.asarray(events["ttbar"][region][1])
        assert set(np.unique(w)) == {0.0, agc.samples["ttbar"].norm}
    # an event is in at most one region
    both = (np.asarray(events["ttbar"]["4j1b"][1]) > 0) & (np.asarray(events["ttbar"]["4j2b"][1]) > 0)
    assert not both.any()
    hists = agc.hard_histograms(p0)
    data = agc.pseudodata(hists)
    for region, h in data.items():
        expected = (0.5 * hists[region]["ttbar_ME_var"].values()
                    + 0.5 * hists[region]["ttbar_PS_var"].values() + hists[region]["wjets"].values())
        np.testing.assert_allclose(h.values(), expected, rtol=1e-12)
