"""The YAML configuration: schema, loading and one-line error messages.

A configuration names the inputs (samples and their files), the analysis parameters
(cut thresholds with bounds and temperatures), the objects and their cuts, the event
selection, the regions with their observable and binning, the statistical model, the
objective and the optimiser. :func:`load` validates it and returns an :class:`AnalysisConfig`.

Example:
    >>> from diffana.config import load_dict
    >>> cfg = load_dict({"samples": {"sig": {"files": ["s.root"], "cross_section": 1.0},
    ...                              "bkg": {"files": ["b.root"], "cross_section": 10.0}},
    ...                  "regions": {"SR": {"observable": "ht",
    ...                              "binning": {"bins": 3, "low": 0, "high": 300}}},
    ...                  "observables": {"ht": {"kind": "sum", "collection": "jets", "field": "pt"}},
    ...                  "objects": {"jets": {"source": "Jet"}},
    ...                  "model": {"signal": ["sig"]}})
    >>> cfg.regions["SR"].binning.edges
    [0.0, 100.0, 200.0, 300.0]
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from diffana.config.naming import variation_key
from diffana.exceptions import ConfigError


def _not_bool(value: Any) -> Any:
    # YAML reads yes/no/on/off as booleans, which pydantic would take as 1.0 and 0.0
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a finite number, not true/false")
    return value


# a finite number; a string that parses as one is accepted (PyYAML reads 1e3 as a string)
Number = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _KeyError(ValueError):
    """A model check's error about one of the model's keys (``key``), not the whole mapping."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# --- inputs ---------------------------------------------------------------------------------


class Generate(_Strict):
    """Synthetic events written to a local cache as ROOT files on first use."""

    kind: str = "ttbar_vs_wjets"
    events: StrictInt = Field(200_000, gt=0)
    seed: StrictInt = 0


class Sample(_Strict):
    """One physics process: its files and normalisation.

    ``normalisation``: ``events`` gives every event ``σ·L/N_total`` (``N_total`` from
    ``n_total`` or counted in the files); ``genweight`` gives ``σ·L·genWeight/ΣgenWeight``;
    ``weight`` takes the ``genWeight`` branch as the final event weight (already normalised);
    ``none`` gives weight 1 (data).
    """

    files: list[str] = Field(min_length=1)
    tree: str | None = None
    cross_section: Number | None = Field(None, gt=0)
    normalisation: Literal["events", "genweight", "weight", "none"] = "events"
    n_total: StrictInt | None = Field(None, gt=0)
    variation_of: str | None = None
    label: str | None = None

    @model_validator(mode="after")
    def _needs_xsec(self) -> Sample:
        if self.normalisation in ("events", "genweight") and self.cross_section is None:
            raise ValueError(
                f"normalisation {self.normalisation!r} needs a cross_section (pb); "
                "give one or set normalisation: weight or none"
            )
        return self


class Variation(_Strict):
    """A systematic variation computed from the nominal events of each sample it applies to.

    Exactly one of:

    - ``scale: {branch: Jet_pt, factor: 1.03}``: a branch multiplied by a factor (JES),
    - ``smear: {branch: Jet_pt, sigma: 0.05}``: each value × N(1, σ), seeded by ``seed`` (JER),
    - ``weight: 1.025``: the event weights multiplied by a factor,
    - ``reweight: {observable: jet0_pt, slope: 0.0015}``: event weights multiplied by
      ``1 + slope · observable`` — a per-event observable, so soft and differentiable (the
      AGC b-tag variations: ``1 ± 0.075 · pT_i / 50`` with ``pT_i`` the i-th selected jet's).

    The varied events of sample ``S`` are the sample ``S_<name>``: they go through the same
    (soft) selection again, so the variation's templates follow the cuts. ``samples``
    defaults to every nominal sample.
    """

    scale: dict[str, str | Number] | None = None
    smear: dict[str, str | Number] | None = None
    weight: Number | None = Field(None, gt=0)
    reweight: dict[str, str | Number] | None = None
    samples: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> Variation:
        kinds = [k for k in ("scale", "smear", "weight", "reweight") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"give exactly one of scale, smear, weight, reweight (given: {kinds or 'none'})")
        if self.reweight is not None and (
                set(self.reweight) != {"observable", "slope"}
                or not isinstance(self.reweight["observable"], str)
                or isinstance(self.reweight["slope"], str)):
            raise ValueError(f"reweight needs {{observable: NAME, slope: NUMBER}}, got {self.reweight}")
        for kind, number in (("scale", "factor"), ("smear", "sigma")):
            given = getattr(self, kind)
            if given is not None and (set(given) != {"branch", number}
                                      or not isinstance(given["branch"], str)
                                      or isinstance(given[number], str)):
                raise ValueError(f"{kind} needs {{branch: NAME, {number}: NUMBER}}, got {given}")
        return self


# --- parameters -----------------------------------------------------------------------------


class Parameter(_Strict):
    """A named analysis parameter (a cut threshold).

    ``temperature`` sets the softness of every cut that uses it: a cut ``x > c`` weighs an
    object with ``sigmoid((x - c) / temperature)``.
    """

    value: Number
    bounds: tuple[Number, Number]
    trainable: StrictBool = True
    temperature: Number = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _inside_bounds(self) -> Parameter:
        lo, hi = self.bounds
        if not lo < hi:
            raise _KeyError("bounds", f"bounds must be increasing, got [{lo}, {hi}]")
        if not lo <= self.value <= hi:
            raise _KeyError("value", f"value {self.value} is outside bounds [{lo}, {hi}]; "
                                     "give a value within the bounds")
        return self


# --- objects and selection ------------------------------------------------------------------

Threshold = Union[Number, str]


class ObjectCut(_Strict):
    """A cut on one field of each object of a collection.

    ``above``/``below`` take a number (a hard cut, applied once when the events are
    prepared) or a parameter name (a soft cut with that parameter's temperature).
    ``abs`` cuts on ``|x|``. ``equals`` and ``bits_set`` are hard flag requirements
    (``jetId & bits_set == bits_set``).
    """

    field: str
    above: Threshold | None = None
    below: Threshold | None = None
    abs: StrictBool = False
    equals: Number | StrictBool | None = None
    bits_set: StrictInt | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ObjectCut:
        given = [k for k in ("above", "below", "equals", "bits_set") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of above, below, equals, bits_set (given: {given or 'none'})"
            )
        return self


class ObjectCollection(_Strict):
    """A collection of objects: a branch prefix (``Jet``) or a subset of another collection."""

    source: str
    fields: dict[str, str] = Field(default_factory=dict)
    cuts: list[ObjectCut] = Field(default_factory=list)


class Requirement(_Strict):
    """An event requirement. Exactly one form:

    - ``{count: jets, at_least: 4}`` or ``exactly: 1`` (soft count, ``temperature`` of the count),
    - ``{observable: lep_pt, above: lep_pt_min}`` (or ``below``; number: hard, name: soft),
    - ``{all: [...]}`` (AND, a product) or ``{any: [...]}`` (OR, ``1 - Π(1 - w)``).
    """

    count: str | None = None
    at_least: StrictInt | None = Field(None, ge=0)
    exactly: StrictInt | None = Field(None, ge=0)
    temperature: Number = Field(0.5, gt=0)
    observable: str | None = None
    above: Threshold | None = None
    below: Threshold | None = None
    all: list[Requirement] | None = None
    any: list[Requirement] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Requirement:
        forms = [k for k in ("count", "observable", "all", "any") if getattr(self, k) is not None]
        if len(forms) != 1:
            raise ValueError(
                f"give exactly one of count, observable, all, any (given: {forms or 'none'})")
        if self.count is not None and (self.at_least is None) == (self.exactly is None):
            raise ValueError("a count requirement needs exactly one of at_least, exactly")
        if self.observable is not None and (self.above is None) == (self.below is None):
            raise ValueError("an observable requirement needs exactly one of above, below")
        return self


class Observable(_Strict):
    """A per-event observable computed by a registered function (see ``diffana.observe``)."""

    kind: str
    collection: str | None = None
    field: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Binning(_Strict):
    """Bin edges, either explicit or regular (``bins``, ``low``, ``high``)."""

    edges: list[Number] | None = None
    bins: StrictInt | None = Field(None, gt=0, le=100_000)
    low: Number | None = None
    high: Number | None = None

    @model_validator(mode="after")
    def _edges(self) -> Binning:
        if self.edges is not None:
            if any(k is not None for k in (self.bins, self.low, self.high)):
                raise ValueError("give either edges or bins/low/high, not both")
            if len(self.edges) < 2:
                raise _KeyError("edges", f"edges need at least two values, got {self.edges}")
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise _KeyError("edges", f"edges must be strictly increasing, got {self.edges}")
            return self
        if None in (self.bins, self.low, self.high):
            missing = [k for k in ("bins", "low", "high") if getattr(self, k) is None]
            raise ValueError(
                f"give edges, or all of bins, low, high (missing: {', '.join(missing)})")
        if not self.low < self.high:
            raise _KeyError("low", f"low must be below high, got low={self.low}, high={self.high}")
        edges = [float(x) for x in np.linspace(self.low, self.high, self.bins + 1)]
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise _KeyError("bins", f"{self.bins} bins from {self.low} to {self.high} do not give "
                                    "finite, strictly increasing edges")
        # the edges stand for all of it: a dumped configuration loads again
        for key, value in (("edges", edges), ("bins", None), ("low", None), ("high", None)):
            object.__setattr__(self, key, value)
        return self


class Region(_Strict):
    """An analysis region: extra requirements, the observable histogrammed and its binning."""

    selection: list[Requirement] = Field(default_factory=list)
    observable: str
    binning: Binning
    bandwidth: Number = Field(1.0, gt=0)
    # expected events added to every bin of every sample: > 0, so that an empty bin or a
    # vanishing background cannot give an infinite significance or a NaN gradient
    floor: Number = Field(1e-3, gt=0)


# --- model, objective, optimiser ------------------------------------------------------------


class Systematic(_Strict):
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
    type: Literal["normsys", "histosys", "lumi", "normplusshape"]
    samples: list[str] = Field(default_factory=list)
    up: Number | str | None = None
    down: Number | str | None = None
    symmetrise: StrictBool = False
    variations: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> Systematic:
        numbers = all(v is None or isinstance(v, float) for v in (self.up, self.down))
        if self.type in ("normsys", "lumi") and not numbers:
            raise ValueError(f"a {self.type} needs numbers for up and down, got "
                             f"up={self.up!r}, down={self.down!r}")
        if self.type == "normsys" and (self.up is None or self.down is None or not self.samples):
            raise ValueError("a normsys needs samples, up and down")
        if self.type == "histosys":
            if not self.variations:
                raise ValueError("a histosys needs variations: {sample: {up: ..., down: ...}}")
            for s, v in self.variations.items():
                extra = set(v) - {"up", "down"}
                if "up" not in v or extra:
                    raise ValueError(f"variations.{s} needs up (and optionally down), got {sorted(v)}")
        if self.type == "lumi" and (self.up is None or not self.samples):
            raise ValueError("a lumi systematic needs samples and up (the relative uncertainty)")
        if self.type == "normplusshape":
            if not isinstance(self.up, str) or isinstance(self.down, float):
                raise ValueError("a normplusshape needs up (and down) naming variations, e.g. "
                                 f"up: pt_scale_up; got up={self.up!r}, down={self.down!r}")
            if (self.down is None) != self.symmetrise:
                raise ValueError("a normplusshape needs exactly one of down (a variation) and "
                                 f"symmetrise: true; got down={self.down!r}, "
                                 f"symmetrise={self.symmetrise}")
        elif self.symmetrise:
            raise ValueError(f"symmetrise applies to normplusshape only, not {self.type}")
        return self


class ModelConfig(_Strict):
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
        if not lo <= 1.0 <= hi:  # the fits start from POI = 1 (diffana.spec)
            raise ValueError(f"bounds [{lo}, {hi}] must contain 1.0, the POI's initial value")
        return bounds


OBJECTIVES = ("discovery_significance", "expected_cls", "poi_uncertainty", "asimov_significance")


class Objective(_Strict):
    """The figure of merit. Significances are maximised; CLs and uncertainties minimised."""

    kind: Literal[
        "discovery_significance", "expected_cls", "poi_uncertainty", "asimov_significance"
    ] = "discovery_significance"
    poi_value: Number = 1.0
    relative_background_uncertainty: Number = Field(0.1, gt=0)


class Optimiser(_Strict):
    """Any optax optimiser by name, its keyword arguments, and when to stop."""

    name: str = "adam"
    options: dict[str, Any] = Field(default_factory=lambda: {"learning_rate": 0.02})
    steps: StrictInt = Field(100, ge=0)
    tolerance: Number | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        import optax

        if not callable(getattr(optax, name, None)) or name.startswith("_"):
            raise ValueError(f"{name!r} is not an optax optimiser (e.g. adam, sgd, adamw, lbfgs)")
        return name


class Executor(_Strict):
    """Where the chunks are evaluated: here (``local``), or on Dask workers (``dask``).

    ``dask``: ``address`` of a running scheduler (``tcp://host:8786``), or none to start a
    ``LocalCluster`` of ``workers`` processes on this machine. The workers must see the
    input files under the same paths.
    """

    kind: Literal["local", "dask"] = "local"
    address: str | None = None
    workers: StrictInt | None = Field(None, gt=0)


class AnalysisConfig(_Strict):
    """A whole analysis run."""

    name: str = "analysis"
    description: str = ""
    imports: list[str] = Field(default_factory=list)
    generate: Generate | None = None
    tree: str = "Events"
    step_size: StrictInt = Field(500_000, gt=0)
    luminosity: Number = Field(1.0, gt=0)
    samples: dict[str, Sample] = Field(min_length=1)
    variations: dict[str, Variation] = Field(default_factory=dict)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    objects: dict[str, ObjectCollection] = Field(default_factory=dict)
    observables: dict[str, Observable] = Field(default_factory=dict)
    selection: list[Requirement] = Field(default_factory=list)
    regions: dict[str, Region] = Field(min_length=1)
    model: ModelConfig
    objective: Objective = Field(default_factory=Objective)
    optimiser: Optimiser = Field(default_factory=Optimiser)
    engine: Literal["compiled", "awkward"] = "compiled"
    seed: StrictInt = 0
    # drop events that cannot pass the top-level count requirements (see ragged.structural_keep)
    preselect: StrictBool = False
    # NaN/inf in a branch read: stop with an error naming the file, branch and entry, or drop
    # the objects (jagged branches) or events (event branches) that have them (diffana.checks)
    nonfinite: Literal["stop", "drop"] = "stop"
    # compiled engine: events per chunk (one compiled function serves every chunk), and how
    # gradients are taken (fused: one compiled value_and_grad scanning all chunks; forward:
    # per chunk, a tangent per parameter; reverse: per chunk, a yields pass then a VJP
    # pass; forward and reverse hold one chunk's intermediates at a time; auto: fused, or
    # when streaming forward for up to 8 trainable parameters and reverse for more)
    chunk_size: StrictInt = Field(65_536, gt=0)
    gradient: Literal["auto", "fused", "forward", "reverse"] = "auto"
    # read and lower the events chunk by chunk on every evaluation instead of holding them:
    # memory bounded by a chunk, whatever the number of events (compiled engine)
    streaming: StrictBool = False
    # where the compiled engine runs: JAX's default device (auto), or the first cpu or gpu
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # the compiled chunks evaluated here or on Dask workers (see Executor)
    executor: Executor = Field(default_factory=Executor)

    @model_validator(mode="after")
    def _references(self) -> AnalysisConfig:
        for key, on in (("streaming", self.streaming), ("executor.kind", self.executor.kind == "dask")):
            if on and self.engine != "compiled":
                raise _RefError(key, f"needs engine: compiled, got engine: {self.engine}")
            if on and self.gradient == "fused":
                raise _RefError("gradient", f"'fused' holds every chunk at once; with {key}: "
                                f"{'true' if key == 'streaming' else 'dask'} use auto, forward "
                                "or reverse")
        _check_references(self)
        return self

    @property
    def nominal_samples(self) -> list[str]:
        """Samples that enter the model as processes (not variations)."""
        return [n for n, s in self.samples.items() if s.variation_of is None]

    def variation_samples(self) -> dict[str, tuple[str, str]]:
        """``{S_<variation>: (S, variation)}`` for every computed variation of every sample."""
        return {variation_key(s, v): (s, v) for v, var in self.variations.items()
                for s in (var.samples or self.nominal_samples)}

    def template_sample(self, sample: str, variation: str) -> str | None:
        """The sample holding ``variation`` of ``sample``: computed or its own files."""
        name = f"{sample}_{variation}"
        if name in self.variation_samples():
            return name
        if name in self.samples and self.samples[name].variation_of == sample:
            return name
        return None


class _RefError(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def _check_references(cfg: AnalysisConfig) -> None:
    """Cross-references: names used must be defined, thresholds must name parameters."""
    from diffana.observe import OBSERVABLES, REQUIRES

    params = set(cfg.parameters)

    def threshold(path: str, value: Threshold | None) -> None:
        if isinstance(value, str) and value not in params:
            raise _RefError(path, f"{value!r} is not a parameter (defined: {sorted(params)})")

    for name, coll in cfg.objects.items():
        if coll.source in cfg.objects:
            if list(cfg.objects).index(coll.source) >= list(cfg.objects).index(name):
                above = list(cfg.objects)[:list(cfg.objects).index(name)]
                raise _RefError(
                    f"objects.{name}.source",
                    f"{coll.source!r} must be defined before {name!r} (a branch prefix such as "
                    f"Jet, or a collection above it: {above})",
                )
        for i, cut in enumerate(coll.cuts):
            threshold(f"objects.{name}.cuts[{i}].above", cut.above)
            threshold(f"objects.{name}.cuts[{i}].below", cut.below)

    for name, obs in cfg.observables.items():
        if obs.kind not in OBSERVABLES:
            raise _RefError(
                f"observables.{name}.kind",
                f"unknown observable kind {obs.kind!r} (registered: {sorted(OBSERVABLES)})",
            )
        for key in REQUIRES.get(obs.kind, ()):
            given = (obs.options.get(key.split(".", 1)[1]) if key.startswith("options.")
                     else getattr(obs, key))
            if given is None:
                raise _RefError(f"observables.{name}.{key}",
                                f"observable kind {obs.kind!r} needs {key}")
        if obs.collection is not None and obs.collection not in cfg.objects:
            raise _RefError(
                f"observables.{name}.collection",
                f"{obs.collection!r} is not an object collection (defined: {sorted(cfg.objects)})",
            )

    def requirement(path: str, req: Requirement) -> None:
        if req.count is not None and req.count not in cfg.objects:
            raise _RefError(
                f"{path}.count", f"{req.count!r} is not an object collection ({sorted(cfg.objects)})"
            )
        if req.observable is not None and req.observable not in cfg.observables:
            raise _RefError(
                f"{path}.observable",
                f"{req.observable!r} is not an observable (defined: {sorted(cfg.observables)})",
            )
        threshold(f"{path}.above", req.above)
        threshold(f"{path}.below", req.below)
        for key in ("all", "any"):
            for i, sub in enumerate(getattr(req, key) or []):
                requirement(f"{path}.{key}[{i}]", sub)

    for i, req in enumerate(cfg.selection):
        requirement(f"selection[{i}]", req)
    for rname, region in cfg.regions.items():
        for i, req in enumerate(region.selection):
            requirement(f"regions.{rname}.selection[{i}]", req)
        if region.observable not in cfg.observables:
            raise _RefError(
                f"regions.{rname}.observable",
                f"{region.observable!r} is not an observable (defined: {sorted(cfg.observables)})",
            )

    for name, sample in cfg.samples.items():
        if sample.variation_of is not None and sample.variation_of not in cfg.nominal_samples:
            raise _RefError(
                f"samples.{name}.variation_of",
                f"{sample.variation_of!r} is not a nominal sample ({cfg.nominal_samples})",
            )
    nominal = cfg.nominal_samples
    for vname, var in cfg.variations.items():
        if var.reweight is not None and var.reweight["observable"] not in cfg.observables:
            raise _RefError(f"variations.{vname}.reweight.observable",
                            f"{var.reweight['observable']!r} is not an observable "
                            f"(defined: {sorted(cfg.observables)})")
        for j, s in enumerate(var.samples):
            if s not in nominal:
                raise _RefError(f"variations.{vname}.samples[{j}]",
                                f"{s!r} is not a nominal sample ({nominal})")
    for name in cfg.variation_samples():
        if name in cfg.samples:
            raise _RefError("variations", f"variation sample {name!r} is also a sample name; "
                                          "rename the variation or the sample")
    for s in cfg.model.pseudodata:
        if s not in cfg.samples:
            raise _RefError(f"model.pseudodata.{s}", f"{s!r} is not a sample ({list(cfg.samples)})")
    for i, s in enumerate(cfg.model.signal):
        if s not in nominal:
            raise _RefError(f"model.signal[{i}]", f"{s!r} is not a nominal sample ({nominal})")
    if len(nominal) < 2:
        raise _RefError("samples", f"the model needs at least one background sample, got {nominal}")
    lo, hi = cfg.model.poi_bounds
    if not lo <= cfg.objective.poi_value <= hi:
        raise _RefError("objective.poi_value", f"{cfg.objective.poi_value} is outside "
                                               f"model.poi_bounds [{lo}, {hi}]")
    names = {cfg.model.poi}
    for i, syst in enumerate(cfg.model.systematics):
        if syst.name in names:
            raise _RefError(f"model.systematics[{i}].name",
                            f"duplicate name {syst.name!r} (taken: {sorted(names)})")
        names.add(syst.name)
        for j, s in enumerate(syst.samples):
            if s not in nominal:
                raise _RefError(f"model.systematics[{i}].samples[{j}]",
                                f"{s!r} is not a nominal sample ({nominal})")
        for s, var in syst.variations.items():
            if s not in nominal:
                raise _RefError(f"model.systematics[{i}].variations.{s}",
                                f"{s!r} is not a nominal sample ({nominal})")
            for k, v in var.items():
                computed = cfg.variation_samples().get(v, (None, None))[0] == s
                if not computed and (v not in cfg.samples or cfg.samples[v].variation_of != s):
                    raise _RefError(
                        f"model.systematics[{i}].variations.{s}.{k}",
                        f"{v!r} is neither a sample with variation_of: {s} nor a variation "
                        f"of {s} (known: {sorted(cfg.variation_samples())})",
                    )


# --- loading --------------------------------------------------------------------------------


_TAG_PREFIXES = ("function-", "union[", "tagged-union[", "lax-or-strict[", "json-or-python[")
_TYPE_NAMES = {str: ("a string", "strings"), float: ("a number", "numbers"),
               int: ("an integer", "integers"), bool: ("true or false", "true/false values")}
_PLAIN_KEY = re.compile(r"[^\s.\[\]'\"]+")  # written .key in a key path; others ['key']
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(message: str) -> str:
    """``message`` with line breaks and other control characters escaped."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)


def _unwrap(t: Any) -> Any:
    """``t`` without ``Annotated`` metadata and without ``None`` as an alternative."""
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    if _is_union(t):
        members = [a for a in get_args(t) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return t


def _is_union(t: Any) -> bool:
    return get_origin(t) in (Union, types.UnionType)


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _walk(loc: tuple) -> tuple[str, Any]:
    """The key path of a pydantic error location and the type expected there (None: unknown).

    Union members add a tag to the location (``function-after[...]``, ``str``); those are
    skipped, and a mapping's keys are written ``.key``, a list's indices ``[i]``.
    """
    path, t = "", AnalysisConfig
    for part in loc:
        t = _unwrap(t)
        if _is_union(t) or (t is None and str(part).startswith(_TAG_PREFIXES)):
            t = None
            continue
        if isinstance(part, int) and (t is None or get_origin(t) in (list, tuple)):
            path += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)):
            path += f"[{part!r}]"
        else:
            path += f".{part}" if path else str(part)
        if _is_model(t):
            field = t.model_fields.get(str(part))
            t = field.annotation if field is not None else None
        elif get_origin(t) is tuple:
            args = get_args(t)
            t = args[part] if isinstance(part, int) and part < len(args) else None
        elif get_origin(t) in (list, dict):
            t = get_args(t)[-1]
        else:
            t = None
    return path or "<top level>", t


def _describe(t: Any, plural: bool = False) -> str:
    """What a value of type ``t`` looks like in YAML, e.g. ``a list of strings``."""
    t = _unwrap(t)
    origin, args = get_origin(t), get_args(t)
    if _is_union(t):
        return " or ".join(_describe(a, plural) for a in args if a is not type(None))
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        return "lists" if plural else f"a list of {_describe(args[0], plural=True)}"
    if origin is tuple:
        return f"[{', '.join(_describe(a) for a in args)}]"
    if origin is dict:
        return "mappings" if plural else f"a mapping of names to {_describe(args[1], plural=True)}"
    if _is_model(t):
        return f"{'mappings' if plural else 'a mapping'} with keys {', '.join(t.model_fields)}"
    if t in _TYPE_NAMES:
        return _TYPE_NAMES[t][plural]
    return "any value"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_validation_error(source: str, err: ValidationError) -> str:
    """One line: the file, the key path, the value found and what is allowed."""
    errors = err.errors(include_url=False)
    e = errors[0]
    path, expected = _walk(e["loc"])
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        model = _unwrap(_walk(e["loc"][:-1])[1])
        allowed = list(model.model_fields) if _is_model(model) else []
        close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        return (f"{source}: {path}: unknown key (value {_show(value)}){hint} "
                f"allowed: {', '.join(allowed)}")
    if e["type"] == "missing":
        return f"{source}: {path}: required key is missing (expected {_describe(expected)})"
    if e["type"] == "invalid_key" or e["loc"][-1:] == ("[key]",):
        path = _walk(e["loc"][:-1])[0] if e["type"] != "invalid_key" else path
        return f"{source}: {path}: key {value!r} is not a string; keys are names (quote it)"
    error = e.get("ctx", {}).get("error")
    if isinstance(error, _RefError):
        return f"{source}: {error.path}: {error}"
    msg = e["msg"].removeprefix("Value error, ")
    if isinstance(error, _KeyError):
        path = f"{path}.{error.key}" if path != "<top level>" else error.key
        value = value.get(error.key) if isinstance(value, dict) else value
    elif e["type"] in ("model_type", "model_attributes_type", "dict_type", "list_type",
                       "tuple_type") and expected is not None:
        msg = f"Input should be {_describe(expected)}"
    union = [x for x in errors if _walk(x["loc"])[0] == path and x["type"] != "missing"]
    if len(union) > 1:  # one error per alternative of a union: name every alternative
        alternatives = [x["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
                        .split(", ")[0] for x in union]
        msg = "Input should be " + " or ".join(dict.fromkeys(alternatives))
    # the checks' own messages name the value, except checks of a whole mapping
    named = e["type"] == "value_error" and not isinstance(value, dict)
    shown = "" if path == "<top level>" or named else f" (got {_show(value)})"
    return f"{source}: {path}: {msg}{shown}"


def _already_imported(path: Path) -> bool:
    """Whether the file is already imported under its package name (registering twice would
    replace the registered functions with copies from a second module object)."""
    return any(getattr(m, "__file__", None) and Path(m.__file__).resolve() == path
               for m in list(sys.modules.values()))


def _import_plugins(imports: Any, source: str, base_dir: Path | None) -> None:
    """Import the modules named in ``imports`` (they register observables, generators...).

    An entry is a module name (``analyses.agc_ttbar``) or a ``.py`` file relative to the
    configuration's directory.
    """
    if imports is None:
        return
    if not isinstance(imports, list):
        raise ConfigError(f"{source}: imports: expected a list of modules, got {imports!r}")
    for i, name in enumerate(imports):
        try:
            if isinstance(name, str) and name.endswith(".py"):
                path = (Path(name) if base_dir is None else base_dir / name).resolve()
                module_name = f"diffana_imports.{path.parent.name}.{path.stem}"
                if module_name not in sys.modules and not _already_imported(path):
                    spec = importlib.util.spec_from_file_location(module_name, path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[module_name] = module  # dataclasses and pickling look it up
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[module_name]
                        raise
            else:
                importlib.import_module(str(name))
        except Exception as err:
            raise ConfigError(_one_line(
                f"{source}: imports[{i}]: cannot import {name!r} ({type(err).__name__}: {err})"
            )) from None


def load_dict(data: Any, source: str = "<config>", base_dir: Path | None = None) -> AnalysisConfig:
    """Validate a configuration given as a Python mapping.

    Raises:
        ConfigError: one line naming ``source``, the key path, the value and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: <top level>: expected a mapping of keys, got {type(data).__name__}"
        )
    _import_plugins(data.get("imports"), source, base_dir)
    try:
        return AnalysisConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(_format_validation_error(source, err))) from None


def _check_unique_keys(node: yaml.Node, path: str, source: str, seen: set[int]) -> None:
    """Raise on a key given twice in one mapping (YAML loaders keep the last silently)."""
    if id(node) in seen:  # an alias to a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                if key in first:
                    raise ConfigError(_one_line(
                        f"{source}:{line}: {path or '<top level>'}: duplicate key {key!r} "
                        f"(first given on line {first[key]}; each key may appear once)"))
                first[key] = line
            _check_unique_keys(value_node, f"{path}.{key}" if path else str(key), source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]", source, seen)


def _yaml_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` that also rejects duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, "", source, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load(path: str | Path) -> AnalysisConfig:
    """Read and validate a YAML configuration file.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML, gives a key twice
            in one mapping, or does not follow the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: byte {err.start} is not UTF-8 text; expected a YAML "
                          "configuration") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        data = _yaml_load(text, str(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(_one_line(f"{path}: {where}YAML syntax error: {problem}")) from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of keys")
    return load_dict(data, source=str(path), base_dir=path.parent)


def dump(cfg: AnalysisConfig) -> str:
    """The resolved configuration (defaults filled in) as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)


def resolve_path(pattern: str, base: Path, generated: Path | None) -> Path:
    """Expand ``{generated}`` and make a relative file path relative to the config's directory."""
    text = pattern
    if "{generated}" in text:
        if generated is None:
            raise ConfigError(f"{pattern}: uses {{generated}} but the config has no generate: block")
        text = text.replace("{generated}", str(generated))
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p
