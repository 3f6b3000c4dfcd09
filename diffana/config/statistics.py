"""The statistical part of the schema: the HistFactory model, the objective, the optimiser.

Example:
    >>> Optimiser(name="sgd", options={"learning_rate": 0.1}).steps
    100
    >>> optax_optimiser("adamm") is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import optax
from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from diffana.config.values import Number, StrictModel
from diffana.systematics import SYSTEMATICS, check_systematic


def optax_optimiser(name: str) -> Callable | None:
    """``optax.<name>`` when it is an optimiser (a public optax function such as ``adam``),
    else None: the one test of an optimiser's name, for the schema and the optimisation loop."""
    factory = getattr(optax, name, None)
    return factory if callable(factory) and not name.startswith("_") else None


class Systematic(StrictModel):
    """A systematic uncertainty in the HistFactory model.

    ``normsys``: ``up``/``down`` are yield factors (e.g. 1.1/0.9) on ``samples``.
    ``histosys``: ``variations`` maps a sample to its ``{up: SAMPLE, down: SAMPLE}`` variation
    samples (``down`` may be omitted: symmetrised as ``2·nominal − up``).
    ``lumi`` uses ``up`` as the relative uncertainty on every sample listed.
    ``normplusshape`` (cabinetry's NormPlusShape): ``up``/``down`` name variations (strings,
    e.g. ``pt_scale_up``); the template of sample ``S`` is then ``S_<variation>`` (in a
    histogram file ``<region>_S_<variation>``). Each variation is split into a ``normsys``
    (its yield ratio to nominal) and a ``histosys`` (its shape, normalised to the nominal
    yield). Without ``down``, ``symmetrise: true`` mirrors the up variation (cabinetry's
    ``Symmetrize``). ``samples`` defaults to every nominal sample.
    """

    name: str
    type: Literal[tuple(SYSTEMATICS)]  # normsys, histosys, lumi, normplusshape
    samples: list[str] = Field(default_factory=list)
    up: Number | str | None = None
    down: Number | str | None = None
    symmetrise: StrictBool = False
    variations: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> Systematic:
        check_systematic(self)
        return self


class ModelConfig(StrictModel):
    """The HistFactory model: signal samples carry the POI normfactor (``poi_bounds``)."""

    poi: str = "mu"
    poi_bounds: tuple[Number, Number] = (0.0, 10.0)
    signal: list[str] = Field(min_length=1)
    staterror: StrictBool = False
    systematics: list[Systematic] = Field(default_factory=list)
    # pseudodata from events: Σ factor × the sample's hard-cut histogram (the AGC's:
    # {ttbar_ME_var: 0.5, ttbar_PS_var: 0.5, wjets: 1}); the workspace's observations and
    # the data points on the plots. Without it the observations are the Asimov data.
    pseudodata: dict[str, Number] = Field(default_factory=dict)

    @field_validator("poi_bounds")
    @classmethod
    def _increasing(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        lo, hi = bounds
        if not lo < hi:
            raise ValueError(f"bounds must be increasing, got [{lo}, {hi}]")
        if not lo <= 1.0 <= hi:  # the fits start from POI = 1 (diffana.stats.spec)
            raise ValueError(f"bounds [{lo}, {hi}] must contain 1.0, the POI's initial value")
        return bounds


class Objective(StrictModel):
    """The figure of merit. Significances are maximised; CLs and uncertainties minimised."""

    kind: Literal[
        "discovery_significance", "expected_cls", "poi_uncertainty", "asimov_significance"
    ] = "discovery_significance"
    poi_value: Number = 1.0
    relative_background_uncertainty: Number = Field(0.1, gt=0)


class Optimiser(StrictModel):
    """Any optax optimiser by name, its keyword arguments, and when to stop."""

    name: str = "adam"
    options: dict[str, Any] = Field(default_factory=lambda: {"learning_rate": 0.02})
    steps: StrictInt = Field(100, ge=0)
    tolerance: Number | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if optax_optimiser(name) is None:
            raise ValueError(f"{name!r} is not an optax optimiser (e.g. adam, sgd, adamw, lbfgs)")
        return name
