"""The configuration schema: one pydantic model per block of the YAML.

Every block forbids unknown keys and is frozen once loaded. The checks here look at one
block at a time (and at the settings of the whole run); whether the names used are defined
is checked after the schema has passed (:mod:`diffana.config.references`).

Example:
    >>> Binning(bins=2, low=0, high=10).edges
    [0.0, 5.0, 10.0]
    >>> ObjectCut(field="pt", above="jet_pt_min").above
    'jet_pt_min'
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, StrictBool, StrictInt, model_validator

from diffana.config.errors import KeyCheckError
from diffana.config.statistics import ModelConfig, Objective, Optimiser
from diffana.config.values import Number, StrictModel, Threshold, exactly_one
from diffana.naming import variation_key


def chunked_evaluation_conflict(engine: str, gradient: str) -> str | None:
    """The setting that stops evaluating chunk by chunk (streaming, Dask workers): ``"engine"``
    unless the engine is compiled, ``"gradient"`` for the fused gradient (it holds every
    chunk at once); None when neither does."""
    if engine != "compiled":
        return "engine"
    if gradient == "fused":
        return "gradient"
    return None


# --- inputs ---------------------------------------------------------------------------------


class Generate(StrictModel):
    """Synthetic events written to a local cache as ROOT files on first use."""

    kind: str = "ttbar_vs_wjets"
    events: StrictInt = Field(200_000, gt=0)
    seed: StrictInt = 0


class Sample(StrictModel):
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


class Variation(StrictModel):
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
        exactly_one(self, ("scale", "smear", "weight", "reweight"))
        if self.reweight is not None and (
                set(self.reweight) != {"observable", "slope"}
                or not isinstance(self.reweight["observable"], str)
                or isinstance(self.reweight["slope"], str)):
            raise ValueError(
                f"reweight needs {{observable: NAME, slope: NUMBER}}, got {self.reweight}")
        for kind, number in (("scale", "factor"), ("smear", "sigma")):
            given = getattr(self, kind)
            if given is not None and (set(given) != {"branch", number}
                                      or not isinstance(given["branch"], str)
                                      or isinstance(given[number], str)):
                raise ValueError(f"{kind} needs {{branch: NAME, {number}: NUMBER}}, got {given}")
        return self


# --- parameters -----------------------------------------------------------------------------


class Parameter(StrictModel):
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
            raise KeyCheckError("bounds", f"bounds must be increasing, got [{lo}, {hi}]")
        if not lo <= self.value <= hi:
            raise KeyCheckError("value", f"value {self.value} is outside bounds [{lo}, {hi}]; "
                                         "give a value within the bounds")
        return self


# --- objects and selection ------------------------------------------------------------------


class ObjectCut(StrictModel):
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
        exactly_one(self, ("above", "below", "equals", "bits_set"))
        return self


class ObjectCollection(StrictModel):
    """A collection of objects: a branch prefix (``Jet``) or a subset of another collection."""

    source: str
    fields: dict[str, str] = Field(default_factory=dict)
    cuts: list[ObjectCut] = Field(default_factory=list)


class Requirement(StrictModel):
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
        exactly_one(self, ("count", "observable", "all", "any"))
        if self.count is not None and (self.at_least is None) == (self.exactly is None):
            raise ValueError("a count requirement needs exactly one of at_least, exactly")
        if self.observable is not None and (self.above is None) == (self.below is None):
            raise ValueError("an observable requirement needs exactly one of above, below")
        return self


class Observable(StrictModel):
    """A per-event observable computed by a registered function (see ``diffana.observe``)."""

    kind: str
    collection: str | None = None
    field: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Binning(StrictModel):
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
                raise KeyCheckError("edges", f"edges need at least two values, got {self.edges}")
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise KeyCheckError("edges",
                                    f"edges must be strictly increasing, got {self.edges}")
            return self
        if None in (self.bins, self.low, self.high):
            missing = [k for k in ("bins", "low", "high") if getattr(self, k) is None]
            raise ValueError(
                f"give edges, or all of bins, low, high (missing: {', '.join(missing)})")
        if not self.low < self.high:
            raise KeyCheckError("low", f"low must be below high, got low={self.low}, "
                                       f"high={self.high}")
        edges = [float(x) for x in np.linspace(self.low, self.high, self.bins + 1)]
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise KeyCheckError("bins", f"{self.bins} bins from {self.low} to {self.high} do "
                                        "not give finite, strictly increasing edges")
        # the edges stand for all of it: a dumped configuration loads again
        for key, value in (("edges", edges), ("bins", None), ("low", None), ("high", None)):
            object.__setattr__(self, key, value)
        return self


class Region(StrictModel):
    """An analysis region: extra requirements, the observable histogrammed and its binning."""

    selection: list[Requirement] = Field(default_factory=list)
    observable: str
    binning: Binning
    bandwidth: Number = Field(1.0, gt=0)
    # expected events added to every bin of every sample: > 0, so that an empty bin or a
    # vanishing background cannot give an infinite significance or a NaN gradient
    floor: Number = Field(1e-3, gt=0)


# --- where the chunks are evaluated -----------------------------------------------------------


class Executor(StrictModel):
    """Where the chunks are evaluated: here (``local``), or on Dask workers (``dask``).

    ``dask``: ``address`` of a running scheduler (``tcp://host:8786``), or none to start a
    ``LocalCluster`` of ``workers`` processes on this machine. The workers must see the
    input files under the same paths.
    """

    kind: Literal["local", "dask"] = "local"
    address: str | None = None
    workers: StrictInt | None = Field(None, gt=0)


class AnalysisConfig(StrictModel):
    """A whole analysis run.

    ``AnalysisConfig.model_validate`` checks the schema only; :func:`diffana.config.load_dict`
    also imports the ``imports:`` and checks the names used (``check_references``).
    """

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
    def _chunk_by_chunk(self) -> AnalysisConfig:
        for key, value, on in (("streaming", "true", self.streaming),
                               ("executor.kind", "dask", self.executor.kind == "dask")):
            conflict = chunked_evaluation_conflict(self.engine, self.gradient) if on else None
            if conflict == "engine":
                raise KeyCheckError(key, f"needs engine: compiled, got engine: {self.engine}")
            if conflict == "gradient":
                raise KeyCheckError("gradient", f"'fused' holds every chunk at once; with {key}: "
                                    f"{value} use auto, forward or reverse")
        return self

    @property
    def nominal_samples(self) -> list[str]:
        """Samples that enter the model as processes (not variations)."""
        return [n for n, s in self.samples.items() if s.variation_of is None]

    def variation_samples(self) -> dict[str, tuple[str, str]]:
        """``{S_<variation>: (S, variation)}`` for every computed variation of every sample."""
        return {variation_key(s, v): (s, v) for v, var in self.variations.items()
                for s in (var.samples or self.nominal_samples)}
