"""The statistical part of the schema: the HistFactory model, the objective, the optimiser.

Example:
    >>> Optimiser(name="sgd", options={"learning_rate": 0.1}).steps
    100
    >>> optax_optimiser("adamm") is None
    True
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from typing import Any, Literal

import optax
from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from diffana.config.errors import KeyCheckError, show
from diffana.config.values import Number, StrictModel, bounds_problem
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

    # the nuisance parameter's name
    name: str
    type: Literal[tuple(SYSTEMATICS)]  # normsys, histosys, lumi, normplusshape
    # the nominal samples it applies to (default: every nominal sample for normplusshape)
    samples: list[str] = Field(default_factory=list)
    # normsys/lumi: a factor or relative uncertainty; normplusshape: the up variation's name
    up: Number | str | None = None
    # normsys: a factor; normplusshape: the down variation's name
    down: Number | str | None = None
    # normplusshape without down: mirror the up variation
    symmetrise: StrictBool = False
    # histosys: sample -> {up: SAMPLE, down: SAMPLE}
    variations: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> Systematic:
        check_systematic(self)
        return self


#: The interpolation codes per modifier type, pyhf's ``modifier_settings`` (the first: pyhf's
#: default); :mod:`diffana.stats.modifiers` implements each (a test holds the two equal).
INTERPOLATION_CODES = {"normsys": ("code4", "code1"), "histosys": ("code4p", "code0")}


class Interpolation(StrictModel):
    """How each modifier type interpolates between its templates (pyhf's ``interpcode``).

    Example:
        >>> Interpolation(normsys="code1").codes()
        {'normsys': 'code1', 'histosys': 'code4p'}
    """

    # normsys: code4 (pyhf's default: polynomial inside ±1σ, exponential outside) or code1
    # (piecewise exponential)
    normsys: Literal[INTERPOLATION_CODES["normsys"]] = "code4"
    # histosys: code4p (pyhf's default: polynomial inside ±1σ, linear outside) or code0
    # (piecewise linear)
    histosys: Literal[INTERPOLATION_CODES["histosys"]] = "code4p"

    def codes(self) -> dict[str, str]:
        """``{modifier type: code}``, as ``diffana infer --interpolation`` takes them."""
        return {"normsys": self.normsys, "histosys": self.histosys}


class ModelConfig(StrictModel):
    """The HistFactory model: signal samples carry the POI normfactor (``poi_bounds``)."""

    # the parameter of interest (a normfactor on the signal samples)
    poi: str = "mu"
    # the POI's bounds; they contain 1, the POI's initial value
    poi_bounds: tuple[Number, Number] = (0.0, 10.0)
    # the nominal samples that carry the POI
    signal: list[str] = Field(min_length=1)
    # MC statistical uncertainties (staterror per region)
    staterror: StrictBool = False
    # the systematic uncertainties
    systematics: list[Systematic] = Field(default_factory=list)
    # pseudodata from events: Σ factor × the sample's hard-cut histogram (the AGC's:
    # {ttbar_ME_var: 0.5, ttbar_PS_var: 0.5, wjets: 1}); the workspace's observations and
    # the data points on the plots. Without it the observations are the Asimov data.
    pseudodata: dict[str, Number] = Field(default_factory=dict)
    # the interpolation codes (see Interpolation): the likelihood's everywhere, in the
    # optimisation, the hard-cut evaluation, the inference and diffana fit
    interpolation: Interpolation = Field(default_factory=Interpolation)

    @field_validator("poi_bounds")
    @classmethod
    def _increasing(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        lo, hi = bounds
        problem = bounds_problem(lo, hi)
        if problem is not None:
            raise ValueError(problem)
        if not lo <= 1.0 <= hi:  # the fits start from POI = 1 (diffana.stats.spec)
            raise ValueError(f"bounds [{lo}, {hi}] must contain 1.0, the POI's initial value")
        return bounds


class Objective(StrictModel):
    """The figure of merit. Significances are maximised; CLs, uncertainties and the
    classifier's cross-entropy minimised.

    ``binary_cross_entropy``: the event-weighted binary cross-entropy of ``observable`` (a
    score in (0, 1)) with the ``signal`` samples as label 1 and every other nominal sample as
    0, over the events after the soft selection (``region``: that region's events); the
    training events where the configuration has a ``split``. Normalised by the total weight
    (``balanced: true``: each class weighted to the same total).
    """

    # discovery_significance, expected_cls, poi_uncertainty, expected_upper_limit (minimised),
    # asimov_significance or binary_cross_entropy (a classifier's loss, minimised)
    kind: Literal[
        "discovery_significance", "expected_cls", "poi_uncertainty", "asimov_significance",
        "expected_upper_limit", "binary_cross_entropy",
    ] = "discovery_significance"
    # binary_cross_entropy: the score, an observable in (0, 1)
    observable: str | None = None
    # binary_cross_entropy: the nominal samples labelled 1 (the others are 0)
    signal: list[str] = Field(default_factory=list)
    # binary_cross_entropy: the region whose events count (default: the top-level selection's)
    region: str | None = None
    # binary_cross_entropy: each class weighted to the same total (default: the event weights)
    balanced: StrictBool = False
    # the POI value tested (expected_cls)
    poi_value: Number = 1.0
    # the CLs level of the median expected upper limit (expected_upper_limit): 0.05 = 95 % CL
    level: Number = Field(0.05, gt=0, lt=1)
    # asimov_significance: the background's relative uncertainty
    relative_background_uncertainty: Number = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _classifier(self) -> Objective:
        if self.kind == "binary_cross_entropy":
            for key in ("observable", "signal"):
                if not getattr(self, key):
                    raise KeyCheckError(key, f"kind binary_cross_entropy needs {key} (the score "
                                             "and the samples labelled 1: observable: nn_score, "
                                             "signal: [ttbar])")
        return self


def _as_number(value: Any) -> Any:
    """A string that reads as a number, as that number (PyYAML reads ``1e-3`` as a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _first_non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """The key path and value of the first NaN or infinity in ``value`` (lists, mappings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, dict):
        items = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next(filter(None, (_first_non_finite(v, p) for p, v in items)), None)


class Inference(StrictModel):
    """What ``diffana run`` (at the final cuts, with hard cuts) and ``diffana fit`` compute
    from their workspace: ``inference.json`` and its figures, as ``diffana infer`` writes
    them. ``inference: false`` is short for ``inference: {enabled: false}``.

    Example:
        >>> Inference.model_validate(False).enabled
        False
    """

    # write inference.json: limits with their band, significance, impacts, scan, correlations
    # (diffana run --no-inference: false)
    enabled: StrictBool = True
    # the CLs level of the upper limits: 0.05 = 95 % CL
    level: Number = Field(0.05, gt=0, lt=1)
    # the POI value of the CLs test (within model.poi_bounds)
    poi_value: Number = 1.0
    # also draw its figures (cls_scan, ranking, likelihood_scan, correlation)
    plots: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class OptaxChoice(StrictModel):
    """An optax optimiser by name and its keyword arguments (a parameter group's own, see
    ``optimiser.groups``).

    ``options`` are checked against the signature of ``optax.<name>``: each an argument it
    takes, the ones it needs given (unless ``options`` is empty: the optimisation loop then
    uses ``learning_rate: 0.02``), every number finite. A string that reads as a number is
    that number.
    """

    # any optax optimiser by name (adam, sgd, adamw, lbfgs, ...)
    name: str = "adam"
    # its keyword arguments, checked against its signature
    options: dict[str, Any] = Field(default_factory=lambda: {"learning_rate": 0.02})

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if optax_optimiser(name) is None:
            raise ValueError(f"{show(name)} is not an optax optimiser (e.g. adam, sgd, adamw, "
                             "lbfgs)")
        return name

    @field_validator("options")
    @classmethod
    def _finite(cls, options: dict[str, Any]) -> dict[str, Any]:
        options = {k: _as_number(v) for k, v in options.items()}
        found = _first_non_finite(options, "")
        if found is not None:
            path, value = found
            raise KeyCheckError(path[1:], f"{value} is not a finite number; expected finite "
                                          "numbers in the options")
        return options

    @model_validator(mode="after")
    def _arguments(self) -> OptaxChoice:
        try:
            parameters = inspect.signature(optax_optimiser(self.name)).parameters.values()
        except (TypeError, ValueError):  # no signature to check against
            return self
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return self
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        allowed = [p.name for p in named]
        for key, value in self.options.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ";"
                raise KeyCheckError(f"options.{key}", f"not an argument of optax.{self.name} "
                                    f"(value {show(value)}){hint} allowed: {', '.join(allowed)}")
        missing = [p.name for p in named if p.default is p.empty and p.name not in self.options]
        if self.options and missing:
            raise KeyCheckError("options", f"optax.{self.name} needs {', '.join(missing)}")
        return self


class Optimiser(OptaxChoice):
    """Any optax optimiser by name, its keyword arguments, and when to stop (see
    :class:`OptaxChoice` for the checks of ``options``); ``groups`` gives a parameter group
    an optimiser of its own.
    """

    # any optax optimiser by name (adam, sgd, adamw, lbfgs, ...)
    name: str = "adam"
    # its keyword arguments, checked against its signature
    options: dict[str, Any] = Field(default_factory=lambda: {"learning_rate": 0.02})
    # optimiser steps at most
    steps: StrictInt = Field(100, ge=0)
    # stop when the objective changes by less than this, relative
    tolerance: Number | None = Field(None, gt=0)
    # an optimiser of its own (name and options) for a parameter group: cuts (the scalar
    # parameters) or a network observable's weights (by the observable's name); the rest
    # keep the optimiser above (optax.multi_transform)
    groups: dict[str, OptaxChoice] = Field(default_factory=dict)
