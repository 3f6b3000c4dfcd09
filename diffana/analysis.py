"""The analysis: stages composed from parameters θ to the objective.

::

    read (uproot) → lower (structure once) → select (soft weights) → observe → histogram (KDE)
      → model (HistFactory spec, differentiable logpdf) → infer (objective)

Every stage after lowering is a pure JAX function of ``(params, events)``
(:mod:`diffana.stages`); the objective is their composition and ``jax.grad`` applies the
chain rule across them. :class:`Analysis` binds a configuration to its events and to an
executor (:mod:`diffana.executors`: held in memory, streamed, on Dask, or the awkward engine),
and is the Python API.

Example (the Python API in a few lines; ``examples/python_api.py`` runs a whole optimisation):

    >>> from diffana import Analysis, load_config              # doctest: +SKIP
    >>> ana = Analysis(load_config("configs/ttbar_vs_wjets.yaml"))  # doctest: +SKIP
    >>> ana.objective(ana.initial_params())                     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffana import executors, learned, network
from diffana.chunks import compute_device
from diffana.compilation import use_compilation_cache
from diffana.config import AnalysisConfig
from diffana.events import EventSet, SampleEvents, SampleReader, StreamedSet
from diffana.exceptions import ConfigError
from diffana.executors.setup import Setup
from diffana.generate import ensure_generated
from diffana.log import Phases, logger
from diffana.plan import ParameterSpace, Plan, build, event_sets, members
from diffana.stages import Kernel, samples_of
from diffana.stats import objective as objectives
from diffana.stats.spec import build as build_spec
from diffana.stats.spec import to_json


class Prepared(NamedTuple):
    """What a configuration fixes before any event is read (:func:`prepare`)."""

    plan: Plan
    space: ParameterSpace
    device: jax.Device
    set_index: dict  # (sample, event set) -> set number (:func:`diffana.plan.event_sets`)
    objective: objectives.Objective  # the figure of merit and its model
    kernel: Kernel


def prepare(cfg: AnalysisConfig, engine: str | None = None, source: str | None = None
            ) -> Prepared:
    """Everything of an analysis that does not need its events: the plan (collections,
    branches, every observable's own check), the parameter space, the device, the event sets,
    the model's structure and the stages' kernel; and the executor's own checks (its optional
    dependencies, the gradient mode it allows: which executor runs is chosen with the events,
    ``streaming: auto``).

    :class:`Analysis` starts with it, and ``diffana validate`` runs it, so a configuration
    that the preparation refuses is refused by both, before an event is read.

    Raises:
        ConfigError: the configuration cannot be prepared (``source``, the configuration's
            file, then the key path, the value, why).
    """
    try:
        plan = build(cfg)
        device = compute_device(cfg.device)
        executors.choose(cfg, engine or cfg.engine)  # refuses what no executor can run
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None
    space = ParameterSpace.of(cfg)
    groups, set_index = event_sets(cfg)
    templates = [m.sample for name in cfg.samples for m in members(cfg, name)]
    objective = objectives.Objective.of(cfg, templates)
    return Prepared(plan, space, device, set_index, objective,
                    Kernel.of(cfg, plan, space, groups))


class Analysis:
    """An analysis configuration bound to its events, ready to evaluate and differentiate.

    Args:
        cfg: the validated configuration.
        base_dir: directory that relative file paths in ``cfg`` are relative to.
        engine: ``compiled`` (flat buffers, one ``jax.jit``) or ``awkward`` (JAX-backed
            Awkward arrays, eager); defaults to ``cfg.engine``.
        progress: show progress bars while reading.
        source: the configuration's file, named first in a configuration error.
        phases: where the seconds of generating, reading and lowering the events go
            (:class:`diffana.log.Phases`; default: a new one, :attr:`phases`).

    Attributes:
        samples: ``{sample: SampleEvents}``, every sample and computed variation.
        readers: the :class:`~diffana.events.SampleReader` of each configured sample.
        executor: where the stages run (see :mod:`diffana.executors`).
        space: the parameters and their unit box (:class:`~diffana.plan.ParameterSpace`).
    """

    def __init__(self, cfg: AnalysisConfig, base_dir: str | Path = ".", engine: str | None = None,
                 progress: bool = True, source: str | None = None, phases: Phases | None = None):
        self.cfg = cfg
        self.engine = engine or cfg.engine
        self.phases = phases if phases is not None else Phases()
        use_compilation_cache(cfg.compilation_cache)  # before anything compiles
        prep = prepare(cfg, self.engine, source)
        self.plan, self.space, self.device = prep.plan, prep.space, prep.device
        self.objective_spec = prep.objective
        base = Path(base_dir)
        generated = None
        if cfg.generate is not None:
            g = cfg.generate
            with self.phases("generate_s"):
                generated = ensure_generated(g.kind, g.events, g.seed, progress=logger.info)
        with self.phases("read_s"):
            self.readers = [SampleReader(cfg, name, self.plan, base, generated)
                            for name in cfg.samples]
        #: in memory or streamed, and why (``streaming: auto`` estimates the events' size here)
        self.streaming_choice = executors.streaming_choice(cfg, self.engine, self.readers,
                                                           self.plan)
        executor = executors.choose(cfg, self.engine, self.streaming_choice.streamed)
        with self.phases("read_s", "reading events" if executor.holds_events else None):
            sets = self._event_sets(prep.set_index, executor.holds_events, progress)
        with self.phases("lower_s", "lowering the events to flat chunks"
                         if executor.holds_events else None):
            self.executor = executor(Setup(prep.kernel, self.objective_spec, self.readers, sets,
                                           prep.set_index, self.device, base, progress))
        logger.debug("%s engine, %s, gradient %s; %d event sets of %d samples and variations; "
                     "%d trainable parameters", self.engine, type(self.executor).__name__,
                     self.executor.gradient_mode, len(prep.set_index), len(self.samples),
                     len(self.trainable))
        self._initial = self._standardised(self.space.initial_params())
        if cfg.init is not None:  # another run's final parameters (and networks) instead
            found = learned.load(base / cfg.init.from_)
            start = learned.start_from(self._initial, found, repr(cfg.init.from_),
                                       optional=self.space.binnings.values())
            self._initial = jax.tree_util.tree_map(
                lambda v: jnp.asarray(v, dtype=jnp.float64), start)

    @property
    def streaming(self) -> dict:
        """Whether the events are streamed from the files, and why:
        ``{"streamed": bool, "why": str}`` (see :func:`diffana.executors.streaming_choice`)."""
        return self.streaming_choice._asdict()

    def _event_sets(self, set_index: dict, held: bool, progress: bool) -> list:
        """Each event set, read into memory (``held``) or left in the files; fills
        :attr:`samples`."""
        sets: list = [None] * len(set_index)
        self.samples: dict[str, SampleEvents] = {}
        total = sum(sum(r.entries) for r in self.readers)
        with tqdm(total=total, desc="reading events", unit="ev", disable=not (held and progress),
                  leave=False) as bar:
            for r in self.readers:
                if held:
                    by_key = {key: EventSet(ev, w, self.plan)
                              for key, (ev, w) in r.read(self.cfg.step_size, bar.update).items()}
                else:  # the events stay in the files (or go to the workers)
                    by_key = {m.event_set: StreamedSet(r, m.event_set) for m in r.members}
                for key, s in by_key.items():
                    sets[set_index[(r.name, key)]] = s
                self.samples.update({m.sample: SampleEvents(m.sample, r.files, by_key[m.event_set],
                                                            r.norm, m.variant)
                                     for m in r.members})
        return sets

    # --- parameters -------------------------------------------------------------------------

    @property
    def trainable(self) -> list[str]:
        """The names of the trainable parameters, in configuration order."""
        return self.space.trainable

    @property
    def lower_bounds(self) -> np.ndarray:
        return self.space.lower_bounds

    @property
    def upper_bounds(self) -> np.ndarray:
        return self.space.upper_bounds

    def initial_params(self) -> dict:
        """All parameters at their configured values, as float64 JAX scalars (a network's
        group: its initial weights and the standardisation of its inputs)."""
        return dict(self._initial)

    def _standardised(self, params: dict) -> dict:
        """``params`` with each network's inputs standardised by their weighted mean and
        width over the training events at these parameters' cuts."""
        if not self.space.networks:
            return params
        moments = jax.device_get(self.executor.input_moments(params))
        out = dict(params)
        for name, sums in moments.items():
            shift, scale = network.standardisation(sums)
            out[name] = {**params[name], "shift": jnp.asarray(shift), "scale": jnp.asarray(scale)}
        return out

    def to_unit(self, params: dict) -> jax.Array:
        """Trainable parameters mapped to the unit box: ``u = (θ - lo) / (hi - lo)``."""
        return self.space.to_unit(params)

    def from_unit(self, u, fixed: dict | None = None) -> dict:
        """All parameters, the trainable ones from unit-box coordinates ``u``."""
        return self.space.from_unit(u, fixed)

    # --- select, observe, histogram ---------------------------------------------------------

    def region_events(self, params: dict, hard: bool = False) -> dict:
        """Per sample and region: ``(observable, event weight)`` per event.

        The event weight is normalisation × soft selection (hard: 0/1 selection). When
        streaming, this holds every event's values in memory at once.
        """
        parts: dict = {}
        for g, events in self.executor.event_parts(params, hard):
            for sample, regions in samples_of(self.executor.kernel, g, events):
                for r, xw in regions.items():
                    parts.setdefault(sample, {}).setdefault(r, []).append(xw)
        return {s: {r: tuple(jnp.concatenate(c) for c in zip(*xw, strict=True))
                    for r, xw in regions.items()} for s, regions in parts.items()}

    def yields(self, params: dict) -> dict:
        """KDE yields ``[region][sample] = {"nominal", "sumw2"}``: differentiable in ``params``."""
        return self.executor.yields(params)

    def yields_and_jacobian(self, params: dict) -> tuple[dict, dict]:
        """Yields and ``∂yields/∂θ`` of the trainable parameters (``[region][sample][key][θ]``)."""
        return self.executor.yields_and_jacobian(params)

    def hard_histograms(self, params: dict, part: str = "test") -> dict:
        """Hard cuts filled into ``hist.Hist`` histograms ``[region][sample]``.

        ``part``: with a ``split`` in the configuration, the events filled (``test``: the
        held-out events, weights × 1/f; ``train``: the training events, × 1/(1 − f);
        ``all``); without one, all events whatever ``part``.
        """
        return self.executor.hard_histograms(params, list(self.samples), part)

    def hard_yields(self, params: dict, hists: dict | None = None, part: str = "test") -> dict:
        """Yields of the hard histograms (``hists``, if already filled at ``params``), with
        the same floor as the soft ones."""
        hists = hists or self.hard_histograms(params, part)
        return {r: {s: {"nominal": jnp.asarray(h.values()) + self.cfg.regions[r].floor,
                        "sumw2": jnp.asarray(h.variances())}
                    for s, h in hs.items()} for r, hs in hists.items()}

    def pseudodata(self, hists: dict) -> dict | None:
        """``{region: hist.Hist}``: the configured pseudodata from hard histograms, if any."""
        mix = self.cfg.model.pseudodata
        if not mix:
            return None
        return {r: sum((hs[s] * float(f) for s, f in mix.items()), start=hs[next(iter(mix))] * 0.0)
                for r, hs in hists.items()}

    def close(self) -> None:
        """Let go of the Dask cluster or client, if any."""
        self.executor.close()

    # --- model and infer --------------------------------------------------------------------

    @property
    def model(self):
        """The HistFactory model (:class:`diffana.stats.Model`), built once."""
        return self.objective_spec.model

    def spec(self, yields: dict) -> dict:
        """The pyhf spec of these yields (leaves may be traced JAX arrays)."""
        return build_spec(self.cfg, yields)

    def workspace(self, yields: dict, observations: dict | None = None) -> dict:
        """The pyhf workspace JSON (plain floats) of these yields (observations: Asimov)."""
        return to_json(build_spec(self.cfg, yields, observations))

    def objective_from_yields(self, yields: dict):
        """The configured figure of merit of these yields."""
        return objectives.value(self.objective_spec, yields)

    @property
    def maximise(self) -> bool:
        """Whether a larger objective is better (significances) or worse (CLs, uncertainties)."""
        return self.objective_spec.maximise

    def objective(self, params: dict):
        """Soft objective at ``params`` (differentiable: ``jax.grad(ana.objective)(params)``)."""
        return self.executor.objective(params)

    def hard_objective(self, params: dict, hists: dict | None = None, part: str = "test") -> float:
        """The objective with hard cuts and hard histograms: the honest evaluation (on the
        held-out events where the configuration has a ``split``; see :meth:`hard_histograms`).
        A classifier's loss (``binary_cross_entropy``): with hard cuts, on those events."""
        if self.objective_spec.of_events:
            return float(objectives.jit_value(self.objective_spec, None,
                                              self.executor.classifier_sums(params, True, part)))
        return float(objectives.jit_value(self.objective_spec,
                                          self.hard_yields(params, hists, part)))

    # --- what the optimiser calls -----------------------------------------------------------

    def loss_and_grad(self, u, params_fixed: dict | None = None):
        """Loss (``-objective`` when maximised) and its gradient in unit-box coordinates.

        The ragged stages run chunk by chunk and are chained to the compiled model and
        inference stages: ``∂loss/∂u = Σ_chunks ∂loss/∂yields · ∂yields_chunk/∂u``; the
        executor chooses how (:attr:`executor.gradient_mode`).
        """
        return self.executor.loss_and_grad(u, params_fixed or self.initial_params())

    def sensitivity(self, params: dict, yields_and_jacobian: tuple | None = None) -> dict:
        """∂objective/∂θ split into the contribution of each region × sample's yields.

        Returns ``{param: {"region/sample": d}}`` with ``Σ d = ∂objective/∂param`` (the chain
        rule ``∂objective/∂yields · ∂yields/∂θ`` summed over bins, nominal and Σw² together).
        ``yields_and_jacobian``: what :meth:`yields_and_jacobian` gave at ``params``, if at hand.
        """
        if self.objective_spec.of_events:
            logger.info("no sensitivity by template: the objective %s is a sum over events, "
                        "not a function of the yields", self.cfg.objective.kind)
            return {}
        y, dy_dtheta = yields_and_jacobian or self.yields_and_jacobian(params)
        dloss_dy = self.executor.loss_gradient_in_yields(params)
        if dloss_dy is None:
            dobj_dy = objectives.jit_gradient(self.objective_spec, y)
        else:  # the loss is the objective, negated where it is maximised (exact in floats)
            dobj_dy = jax.tree_util.tree_map(jnp.negative, dloss_dy) if self.maximise else dloss_dy
        return objectives.sensitivity(dobj_dy, dy_dtheta, self.trainable, list(self.samples))
