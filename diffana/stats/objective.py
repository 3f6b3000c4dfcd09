"""The figure of merit from the yields: the objective, the loss and the sensitivity.

An :class:`Objective` holds the configured objective and the HistFactory model built once
for the spec's structure; :func:`value`, :func:`loss` and their compiled forms are pure
functions of ``(objective, yields)`` with the objective a static argument:

    >>> jit_value(objective, yields)                                  # doctest: +SKIP

A ``binary_cross_entropy`` objective is not a function of the yields but a sum over events:
its value takes the classifier's sums per nominal sample (:mod:`diffana.classifier`), which
the stages accumulate beside the yields (``value(objective, yields, classifier)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from diffana import classifier as classifiers
from diffana.config import AnalysisConfig
from diffana.exported import persistent
from diffana.stats.infer import (
    asimov_significance_closed_form,
    discovery_significance,
    expected_cls,
    poi_uncertainty,
)
from diffana.stats.limit import expected_upper_limit
from diffana.stats.model import Model
from diffana.stats.modifiers import modifier_settings
from diffana.stats.spec import build, to_json

#: Objectives that are maximised (significances); the others (CLs, uncertainties) are minimised.
MAXIMISED = frozenset({"discovery_significance", "asimov_significance"})


@dataclass(frozen=True, eq=False)
class Objective:
    """The configured figure of merit and its model: hashable by identity (static under jit)."""

    cfg: AnalysisConfig
    model: Model

    @classmethod
    def of(cls, cfg: AnalysisConfig, samples: list[str]) -> Objective:
        """The objective of ``cfg``; ``samples``: every template (nominal and variations).

        The model's structure does not depend on the yields: it is built once, from
        placeholder yields.
        """
        placeholder = {r: {s: {"nominal": np.ones(len(reg.binning.edges) - 1),
                               "sumw2": np.ones(len(reg.binning.edges) - 1)} for s in samples}
                       for r, reg in cfg.regions.items()}
        settings = modifier_settings(cfg.model.interpolation.codes())
        return cls(cfg, Model(to_json(build(cfg, placeholder)), poi_name=cfg.model.poi,
                              modifier_settings=settings))

    @property
    def maximise(self) -> bool:
        """Whether a larger objective is better (significances) or worse (CLs, uncertainties)."""
        return self.cfg.objective.kind in MAXIMISED

    @property
    def of_events(self) -> bool:
        """Whether the objective is a sum over events (a classifier's loss), not a function
        of the yields."""
        return self.cfg.objective.kind == "binary_cross_entropy"


def value(objective: Objective, yields: dict | None, classifier: dict | None = None):
    """The configured figure of merit of ``yields[region][sample] = {"nominal", "sumw2"}``
    (or, of a classifier's loss, of its sums per nominal sample ``classifier``).

    Raises:
        ValueError: a ``binary_cross_entropy`` objective without ``classifier``.
    """
    cfg, model = objective.cfg, objective.model
    obj = cfg.objective
    if objective.of_events:
        if classifier is None:
            raise ValueError("objective binary_cross_entropy is a sum over events: its value "
                             "needs the classifier's sums per sample, not the yields")
        return classifiers.cross_entropy(classifier, obj.signal, obj.balanced)
    if obj.kind == "asimov_significance":
        sig = cfg.model.signal
        bkg = [s for s in cfg.nominal_samples if s not in sig]
        s = jnp.concatenate([sum(yields[r][x]["nominal"] for x in sig) for r in cfg.regions])
        b = jnp.concatenate([sum(yields[r][x]["nominal"] for x in bkg) for r in cfg.regions])
        return asimov_significance_closed_form(s, b, obj.relative_background_uncertainty)
    templates = model.templates(build(cfg, yields))
    if obj.kind == "discovery_significance":
        return discovery_significance(model, templates)
    if obj.kind == "expected_cls":
        return expected_cls(model, templates, obj.poi_value)
    if obj.kind == "expected_upper_limit":
        return expected_upper_limit(model, templates, obj.level)
    return poi_uncertainty(model, templates)


def loss(objective: Objective, yields: dict, classifier: dict | None = None):
    """What the optimiser minimises: the objective, negated when it is maximised."""
    v = value(objective, yields, classifier)
    return -v if objective.maximise else v


jit_value = persistent(jax.jit(value, static_argnums=0), "value", (0,))
jit_gradient = persistent(jax.jit(jax.grad(value, argnums=1), static_argnums=0), "gradient", (0,))
jit_loss_and_gradient = persistent(jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0),
                                   "loss_and_gradient", (0,))


def sensitivity(dobjective_dyields: dict, dyields_dtheta: dict, trainable: list[str],
                samples: list[str]) -> dict:
    """``∂objective/∂θ`` split into the contribution of each region × sample's yields.

    ``{param: {"region/sample": d}}`` with ``Σ d = ∂objective/∂param``: the chain rule
    ``∂objective/∂yields · ∂yields/∂θ`` summed over bins, nominal and Σw² together.
    """
    out: dict = {n: {} for n in trainable}
    for r, per_sample in dyields_dtheta.items():
        for s in samples:
            for n in trainable:
                d = sum(float(jnp.sum(dobjective_dyields[r][s][k] * per_sample[s][k][n]))
                        for k in ("nominal", "sumw2"))
                out[n][f"{r}/{s}"] = d
    return out
