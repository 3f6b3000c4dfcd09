"""The cross-references of a configuration: every name used is defined.

Thresholds name parameters, observables name object collections and registered kinds,
requirements and regions name observables, systematics and variations name samples. This
runs after the schema has passed and after the ``imports:`` have registered their
observable kinds (:func:`diffana.config.loading.load_dict`).

Example:
    >>> from diffana.config.schema import AnalysisConfig
    >>> cfg = AnalysisConfig.model_validate(
    ...     {"samples": {"sig": {"files": ["s.root"], "cross_section": 1.0},
    ...                  "bkg": {"files": ["b.root"], "cross_section": 1.0}},
    ...      "regions": {"SR": {"observable": "ht", "binning": {"edges": [0, 1]}}},
    ...      "model": {"signal": ["sig"]}, "luminosity": 1.0})
    >>> try:
    ...     check_references(cfg, "c.yaml")
    ... except ConfigError as err:
    ...     print(err)
    c.yaml: regions.SR.observable: 'ht' is not an observable (defined: [])
"""

from __future__ import annotations

from collections.abc import Callable

from diffana import observe
from diffana.config.errors import one_line, show
from diffana.config.schema import AnalysisConfig, Requirement
from diffana.config.values import Threshold
from diffana.exceptions import ConfigError
from diffana.naming import edges_group


class _RefError(ValueError):
    """A name used at ``path`` that is not defined."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def from_diffana(function: Callable) -> bool:
    """Whether ``function`` (a registered observable or generator) is diffana's own, not one
    an ``imports:`` module registered."""
    module = getattr(function, "__module__", None) or ""
    return module == "diffana" or module.startswith("diffana.")


def plugin_kinds(cfg: AnalysisConfig) -> list[str]:
    """The observable kinds ``cfg`` names that only its ``imports:`` can register (none for a
    configuration without imports): those :func:`check_references` leaves unchecked when the
    imports are not run."""
    if not cfg.imports:
        return []
    own = {name for name, kind in observe.KINDS.items() if from_diffana(kind.compute)}
    return sorted({obs.kind for obs in cfg.observables.values()} - own)


def check_references(cfg: AnalysisConfig, source: str = "<config>", imports: bool = True) -> None:
    """Check that every name ``cfg`` uses is defined.

    ``imports``: whether the configuration's ``imports:`` were run. If not, the observable
    kinds only they can register (:func:`plugin_kinds`) are not checked.

    Raises:
        ConfigError: one line naming ``source``, the key path of the first undefined name,
            and the names defined there.
    """
    try:
        _check(cfg, set() if imports else set(plugin_kinds(cfg)))
    except _RefError as err:
        raise ConfigError(one_line(f"{source}: {err.path}: {err}")) from None


def _check(cfg: AnalysisConfig, unchecked: set[str]) -> None:
    """Raise a :class:`_RefError` at the first name used but not defined (observable kinds in
    ``unchecked`` aside)."""
    params = set(cfg.parameters)

    def threshold(path: str, value: Threshold | None) -> None:
        if isinstance(value, str) and value not in params:
            raise _RefError(path, f"{show(value)} is not a parameter (defined: {sorted(params)})")

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
        if obs.kind not in observe.KINDS and obs.kind not in unchecked:
            raise _RefError(
                f"observables.{name}.kind",
                f"unknown observable kind {show(obs.kind)} (registered: {sorted(observe.KINDS)})",
            )
        requires = () if obs.kind in unchecked else observe.KINDS[obs.kind].requires
        for key in requires:
            given = (obs.options.get(key.split(".", 1)[1]) if key.startswith("options.")
                     else getattr(obs, key))
            if given is None:
                raise _RefError(f"observables.{name}.{key}",
                                f"observable kind {obs.kind!r} needs {key}")
        if obs.collection is not None and obs.collection not in cfg.objects:
            raise _RefError(
                f"observables.{name}.collection",
                f"{show(obs.collection)} is not an object collection "
                f"(defined: {sorted(cfg.objects)})",
            )

    def requirement(path: str, req: Requirement) -> None:
        if req.count is not None and req.count not in cfg.objects:
            raise _RefError(f"{path}.count", f"{show(req.count)} is not an object collection "
                                              f"({sorted(cfg.objects)})")
        if req.observable is not None and req.observable not in cfg.observables:
            raise _RefError(
                f"{path}.observable",
                f"{show(req.observable)} is not an observable (defined: {sorted(cfg.observables)})",
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
        threshold(f"regions.{rname}.bandwidth", region.bandwidth)
        if isinstance(region.bandwidth, str) and cfg.parameters[region.bandwidth].bounds[0] <= 0:
            raise _RefError(f"regions.{rname}.bandwidth",
                            f"parameter {region.bandwidth!r} has bounds "
                            f"{list(cfg.parameters[region.bandwidth].bounds)}; a bandwidth needs a "
                            "lower bound above 0")
        taken = edges_group(rname)
        if region.binning.trainable and (taken in cfg.parameters or taken in cfg.observables):
            raise _RefError(f"regions.{rname}.binning.trainable",
                            f"the edges' parameter group {taken!r} is also the name of a "
                            "parameter or observable; rename it")
        if region.observable not in cfg.observables:
            raise _RefError(
                f"regions.{rname}.observable",
                f"{show(region.observable)} is not an observable "
                f"(defined: {sorted(cfg.observables)})",
            )

    for name, sample in cfg.samples.items():
        if sample.variation_of is not None and sample.variation_of not in cfg.nominal_samples:
            raise _RefError(
                f"samples.{name}.variation_of",
                f"{show(sample.variation_of)} is not a nominal sample ({cfg.nominal_samples})",
            )
    nominal = cfg.nominal_samples
    for vname, var in cfg.variations.items():
        if var.reweight is not None and var.reweight["observable"] not in cfg.observables:
            raise _RefError(f"variations.{vname}.reweight.observable",
                            f"{show(var.reweight['observable'])} is not an observable "
                            f"(defined: {sorted(cfg.observables)})")
        for j, s in enumerate(var.samples):
            if s not in nominal:
                raise _RefError(f"variations.{vname}.samples[{j}]",
                                f"{show(s)} is not a nominal sample ({nominal})")
    for name in cfg.variation_samples():
        if name in cfg.samples:
            raise _RefError("variations", f"variation sample {name!r} is also a sample name; "
                                          "rename the variation or the sample")
    for s in cfg.model.pseudodata:
        if s not in cfg.samples:
            raise _RefError(f"model.pseudodata.{s}", f"{s!r} is not a sample ({list(cfg.samples)})")
    for i, s in enumerate(cfg.model.signal):
        if s not in nominal:
            raise _RefError(f"model.signal[{i}]", f"{show(s)} is not a nominal sample ({nominal})")
    if len(nominal) < 2:
        raise _RefError("samples", f"the model needs at least one background sample, got {nominal}")
    lo, hi = cfg.model.poi_bounds
    for key, tested in (("objective", cfg.objective), ("inference", cfg.inference)):
        if not lo <= tested.poi_value <= hi:
            raise _RefError(f"{key}.poi_value", f"{tested.poi_value} is outside "
                                                f"model.poi_bounds [{lo}, {hi}]")
    if cfg.objective.kind == "binary_cross_entropy":
        _check_classifier(cfg)
    names = {cfg.model.poi}
    for i, syst in enumerate(cfg.model.systematics):
        if syst.name in names:
            raise _RefError(f"model.systematics[{i}].name",
                            f"duplicate name {show(syst.name)} (taken: {sorted(names)})")
        names.add(syst.name)
        for j, s in enumerate(syst.samples):
            if s not in nominal:
                raise _RefError(f"model.systematics[{i}].samples[{j}]",
                                f"{show(s)} is not a nominal sample ({nominal})")
        for s, var in syst.variations.items():
            if s not in nominal:
                raise _RefError(f"model.systematics[{i}].variations.{s}",
                                f"{s!r} is not a nominal sample ({nominal})")
            for k, v in var.items():
                computed = cfg.variation_samples().get(v, (None, None))[0] == s
                if not computed and (v not in cfg.samples or cfg.samples[v].variation_of != s):
                    raise _RefError(
                        f"model.systematics[{i}].variations.{s}.{k}",
                        f"{show(v)} is neither a sample with variation_of: {s} nor a variation "
                        f"of {s} (known: {sorted(cfg.variation_samples())})",
                    )


def _check_classifier(cfg: AnalysisConfig) -> None:
    """A ``binary_cross_entropy`` objective names an observable, nominal samples (not all of
    them: the others are its label 0) and, if any, a region."""
    obj, nominal = cfg.objective, cfg.nominal_samples
    if obj.observable not in cfg.observables:
        raise _RefError("objective.observable", f"{show(obj.observable)} is not an observable "
                                                f"(defined: {sorted(cfg.observables)})")
    for i, s in enumerate(obj.signal):
        if s not in nominal:
            raise _RefError(f"objective.signal[{i}]",
                            f"{show(s)} is not a nominal sample ({nominal})")
    if set(nominal) <= set(obj.signal):
        raise _RefError("objective.signal", f"{obj.signal} leaves no nominal sample labelled 0 "
                                            f"(expected some of {nominal} as the background)")
    if obj.region is not None and obj.region not in cfg.regions:
        raise _RefError("objective.region", f"{show(obj.region)} is not a region "
                                            f"({sorted(cfg.regions)})")
