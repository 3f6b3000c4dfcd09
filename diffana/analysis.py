"""The analysis: stages composed from parameters θ to the objective.

::

    read (uproot) → lower (structure once) → select (soft weights) → observe → histogram (KDE)
      → model (HistFactory spec, differentiable logpdf) → infer (objective)

Every stage after lowering is a pure JAX function of ``(params, events)``; the objective is
their composition and ``jax.grad`` applies the chain rule across them.

Example (the Python API in a few lines; ``examples/python_api.py`` runs a whole optimisation):

    >>> from diffana import Analysis, load_config              # doctest: +SKIP
    >>> ana = Analysis(load_config("configs/ttbar_vs_wjets.yaml"))  # doctest: +SKIP
    >>> ana.objective(ana.initial_params())                     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffana import infer, io, observe, ragged, select, spec as specmod
from diffana.config import AnalysisConfig, resolve_path
from diffana.generate import ensure_generated
from diffana.histogram import hard_histogram, kde_histogram
from diffana.model import Model

jax.config.update("jax_enable_x64", True)

MAXIMISED = {"discovery_significance", "asimov_significance"}


@dataclass
class SampleEvents:
    """One sample after reading and lowering."""

    name: str
    files: list[Path]
    lowered: ragged.Lowered
    norm: float  # σ·L/N_total (or σ·L/ΣgenWeight per unit genWeight)
    reweight: tuple[str, float] | None = None  # (observable, slope) of a reweight variation

    @property
    def n_events(self) -> int:
        return self.lowered.n_events


def _read_sample(cfg: AnalysisConfig, name: str, plan: ragged.Plan, base: Path,
                 generated: Path | None, bar) -> dict[str, SampleEvents]:
    """Read one sample, lower it, and lower each variation computed from its events."""
    s = cfg.samples[name]
    files = [resolve_path(f, base, generated) for f in s.files]
    tree = s.tree or cfg.tree
    branches = plan.branches + (["genWeight"] if s.normalisation == "genweight" else [])
    branches += [b for v in cfg.variations.values() for b in _varied_branch(v)]
    events = io.read_branches(files, tree, branches, cfg.step_size, progress=bar.update)
    n = len(events)
    genweight = (np.asarray(events["genWeight"], dtype=np.float64)
                 if s.normalisation == "genweight" else None)
    if s.normalisation == "none":
        norm, weight = 1.0, np.ones(n)
    elif s.normalisation == "events":
        n_total = s.n_total or n
        norm = s.cross_section * cfg.luminosity / n_total
        weight = np.full(n, norm)
    else:
        sumw = io.sum_of_weights(files, tree)
        norm = s.cross_section * cfg.luminosity / sumw
        weight = norm * genweight
    if cfg.preselect:  # after the normalisation, which counts every event read
        keep = ragged.structural_keep(events, plan, cfg.selection)
        events, weight = events[keep], weight[keep]
    out = {name: SampleEvents(name, files, ragged.lower(events, plan, weight), norm)}
    for vname, (sample, variation) in cfg.variation_samples().items():
        if sample != name:
            continue
        rw = cfg.variations[variation].reweight
        if rw is not None:  # same events, a soft per-event weight applied in the pipeline
            out[vname] = SampleEvents(vname, files, out[name].lowered, norm,
                                      (str(rw["observable"]), float(rw["slope"])))
            continue
        varied, vweight = _apply_variation(cfg, name, variation, events, weight)
        out[vname] = SampleEvents(vname, files, ragged.lower(varied, plan, vweight), norm)
    return out


def _varied_branch(var) -> list[str]:
    spec = var.scale or var.smear
    return [spec["branch"]] if spec else []


def _apply_variation(cfg: AnalysisConfig, sample: str, name: str, events, weight):
    """The events and weights of one computed variation (see ``config.Variation``)."""
    var = cfg.variations[name]
    if var.weight is not None:
        return events, weight * var.weight
    branch = (var.scale or var.smear)["branch"]
    values = events[branch]
    if var.scale is not None:
        varied = values * float(var.scale["factor"])
    else:
        # Seeded per (run seed, sample, variation): the same events get the same smearing.
        key = [cfg.seed, *(ord(c) for c in f"{sample}/{name}")]
        rng = np.random.default_rng(key)
        flat = ak.flatten(values, axis=None)
        factors = rng.normal(1.0, float(var.smear["sigma"]), len(flat))
        varied = ak.unflatten(ak.to_numpy(flat) * factors, ak.num(values)) if values.ndim > 1 \
            else ak.to_numpy(values) * factors
    return ak.with_field(events, varied, branch), weight


class Analysis:
    """An analysis configuration bound to its events, ready to evaluate and differentiate.

    Args:
        cfg: the validated configuration.
        base_dir: directory that relative file paths in ``cfg`` are relative to.
        engine: ``compiled`` (flat buffers, one ``jax.jit``) or ``awkward`` (JAX-backed
            Awkward arrays, eager); defaults to ``cfg.engine``.
        progress: show progress bars while reading.
    """

    def __init__(self, cfg: AnalysisConfig, base_dir: str | Path = ".", engine: str | None = None,
                 progress: bool = True):
        self.cfg = cfg
        self.engine = engine or cfg.engine
        self.plan = ragged.plan(cfg)
        self.param_names = list(cfg.parameters)
        self.trainable = [n for n, p in cfg.parameters.items() if p.trainable]
        lo = np.array([cfg.parameters[n].bounds[0] for n in self.trainable], dtype=np.float64)
        hi = np.array([cfg.parameters[n].bounds[1] for n in self.trainable], dtype=np.float64)
        self.lower_bounds, self.upper_bounds = lo, hi

        base = Path(base_dir)
        generated = None
        if cfg.generate is not None:
            g = cfg.generate
            generated = ensure_generated(g.kind, g.events, g.seed,
                                         progress=(lambda m: tqdm.write(m)) if progress else None)
        total = sum(io.num_entries([resolve_path(f, base, generated) for f in s.files],
                                   s.tree or cfg.tree) for s in cfg.samples.values())
        with tqdm(total=total, desc="reading events", unit="ev", disable=not progress,
                  leave=False) as bar:
            self.samples = {}
            for name in cfg.samples:
                self.samples.update(_read_sample(cfg, name, self.plan, base, generated, bar))
        self._edges = {r: jnp.asarray(reg.binning.edges) for r, reg in cfg.regions.items()}
        if self.engine == "compiled":
            # one copy per set of lowered events (reweight variations share their nominal's)
            self._buffers = {n: ragged.to_device(self.samples[n].lowered.buffers)
                             for n in self._groups()}
            self._value_and_grad = jax.jit(jax.value_and_grad(self._loss_compiled))
            self._soft_events = jax.jit(partial(self._region_events_compiled, hard=False))
            self._hard_events = jax.jit(partial(self._region_events_compiled, hard=True))
        else:
            ragged.enable_awkward_jax()
        self.model = Model(specmod.to_json(specmod.build(cfg, self._placeholder_yields())),
                           poi_name=cfg.model.poi)
        self._objective_from_yields = jax.jit(self.objective_from_yields)
        sign = -1.0 if self.maximise else 1.0
        self._dobjective_dyields = jax.jit(jax.grad(self.objective_from_yields))
        self._loss_of_yields = jax.jit(jax.value_and_grad(
            lambda y: sign * self.objective_from_yields(y)))

    # --- parameters -------------------------------------------------------------------------

    def initial_params(self) -> dict:
        """All parameters at their configured values, as float64 JAX scalars."""
        return {n: jnp.asarray(p.value, dtype=jnp.float64) for n, p in self.cfg.parameters.items()}

    def to_unit(self, params: dict) -> jax.Array:
        """Trainable parameters mapped to the unit box: ``u = (θ - lo) / (hi - lo)``."""
        theta = jnp.stack([jnp.asarray(params[n], dtype=jnp.float64) for n in self.trainable])
        return (theta - self.lower_bounds) / (self.upper_bounds - self.lower_bounds)

    def from_unit(self, u, fixed: dict | None = None) -> dict:
        """All parameters, the trainable ones from unit-box coordinates ``u``."""
        params = dict(fixed or self.initial_params())
        theta = self.lower_bounds + (self.upper_bounds - self.lower_bounds) * u
        for i, n in enumerate(self.trainable):
            params[n] = theta[i]
        return params

    # --- select and observe -----------------------------------------------------------------

    def _region_events(self, ops, params: dict, weight, hard: bool,
                       reweights: dict[str, tuple[str, float] | None]) -> dict:
        """Select and observe once for one set of lowered events; one entry per sample.

        Reweight variations share their nominal's events: only their event weights differ.
        """
        cfg = self.cfg
        weights = select.object_weights(cfg, self.plan, ops, params, hard)
        obs = observe.evaluate(cfg, self.plan, ops, weights)
        common = select.event_weights(cfg, self.plan, ops, cfg.selection, weights, obs, params, hard)
        regions = {rname: (obs[region.observable],
                           common * weight * select.event_weights(
                               cfg, self.plan, ops, region.selection, weights, obs, params, hard))
                   for rname, region in cfg.regions.items()}
        out = {}
        for name, reweight in reweights.items():
            factor = 1.0 if reweight is None else 1.0 + reweight[1] * obs[reweight[0]]
            out[name] = {r: (x, w * factor) for r, (x, w) in regions.items()}
        return out

    def _groups(self) -> dict[str, dict[str, tuple[str, float] | None]]:
        """Samples grouped by the lowered events they share: ``{owner: {sample: reweight}}``."""
        owner_of: dict[int, str] = {}
        groups: dict[str, dict] = {}
        for n, s in self.samples.items():
            owner = owner_of.setdefault(id(s.lowered), n)
            groups.setdefault(owner, {})[n] = s.reweight
        return groups

    def _region_events_compiled(self, params: dict, buffers: dict, hard: bool) -> dict:
        out = {}
        for owner, members in self._groups().items():
            ops = ragged.CompiledOps(buffers[owner], self.samples[owner].n_events)
            out.update(self._region_events(ops, params, buffers[owner]["weight"], hard, members))
        return out

    def region_events(self, params: dict, hard: bool = False) -> dict:
        """Per sample and region: ``(observable, event weight)`` per event.

        The event weight is normalisation × soft selection (hard: 0/1 selection).
        """
        if self.engine == "compiled":
            fn = self._hard_events if hard else self._soft_events
            return fn(params, self._buffers)
        # Fresh JAX-backed Awkward arrays per evaluation: arrays reused across nested
        # transforms (jacrev after a vjp) were seen to give wrong cotangents.
        out = {}
        for owner, members in self._groups().items():
            lowered = self.samples[owner].lowered
            out.update(self._region_events(ragged.AwkwardOps(lowered), params,
                                           jnp.asarray(lowered.weight), hard, members))
        return out

    # --- histogram --------------------------------------------------------------------------

    def _kde_yields(self, events: dict) -> dict:
        out: dict = {r: {} for r in self.cfg.regions}
        for sample, regions in events.items():
            for r, (x, w) in regions.items():
                reg = self.cfg.regions[r]
                y, w2 = kde_histogram(x, w, self._edges[r], reg.bandwidth)
                out[r][sample] = {"nominal": y + reg.floor, "sumw2": w2}
        return out

    def yields(self, params: dict) -> dict:
        """KDE yields ``[region][sample] = {"nominal", "sumw2"}``: differentiable in ``params``."""
        if self.engine == "compiled":
            return self._yields_compiled(params, self._buffers)
        return self._kde_yields(self.region_events(params))

    @partial(jax.jit, static_argnums=0)
    def _dyields_dtheta(self, theta, params, buffers):
        return jax.jacfwd(lambda th: self._yields_compiled({**params, **th}, buffers))(theta)

    @partial(jax.jit, static_argnums=0)
    def _yields_compiled(self, params, buffers):
        return self._kde_yields(self._region_events_compiled(params, buffers, hard=False))

    def hard_histograms(self, params: dict) -> dict:
        """Hard cuts filled into ``hist.Hist`` histograms ``[region][sample]``."""
        events = self.region_events(params, hard=True)
        return {r: {s: hard_histogram(*events[s][r], self.cfg.regions[r].binning.edges,
                                      label=self.cfg.regions[r].observable)
                    for s in self.samples} for r in self.cfg.regions}

    def hard_yields(self, params: dict) -> dict:
        """Yields of the hard histograms, with the same floor as the soft ones."""
        hists = self.hard_histograms(params)
        return {r: {s: {"nominal": jnp.asarray(h.values()) + self.cfg.regions[r].floor,
                        "sumw2": jnp.asarray(h.variances())}
                    for s, h in hs.items()} for r, hs in hists.items()}

    def _placeholder_yields(self) -> dict:
        return {r: {s: {"nominal": np.ones(len(reg.binning.edges) - 1),
                        "sumw2": np.ones(len(reg.binning.edges) - 1)} for s in self.samples}
                for r, reg in self.cfg.regions.items()}

    # --- model and infer --------------------------------------------------------------------

    def spec(self, yields: dict) -> dict:
        """The pyhf spec of these yields (leaves may be traced JAX arrays)."""
        return specmod.build(self.cfg, yields)

    def workspace(self, yields: dict) -> dict:
        """The pyhf workspace JSON (plain floats) of these yields."""
        return specmod.to_json(self.spec(yields))

    def objective_from_yields(self, yields: dict):
        """The configured figure of merit of these yields."""
        obj = self.cfg.objective
        if obj.kind == "asimov_significance":
            sig = self.cfg.model.signal
            bkg = [s for s in self.cfg.nominal_samples if s not in sig]
            s = jnp.concatenate([sum(yields[r][x]["nominal"] for x in sig) for r in self.cfg.regions])
            b = jnp.concatenate([sum(yields[r][x]["nominal"] for x in bkg) for r in self.cfg.regions])
            return infer.asimov_significance_closed_form(s, b, obj.relative_background_uncertainty)
        templates = self.model.templates(self.spec(yields))
        if obj.kind == "discovery_significance":
            return infer.discovery_significance(self.model, templates)
        if obj.kind == "expected_cls":
            return infer.expected_cls(self.model, templates, obj.poi_value)
        return infer.poi_uncertainty(self.model, templates)

    @property
    def maximise(self) -> bool:
        """Whether a larger objective is better (significances) or worse (CLs, uncertainties)."""
        return self.cfg.objective.kind in MAXIMISED

    def objective(self, params: dict):
        """Soft objective at ``params`` (differentiable: ``jax.grad(ana.objective)(params)``)."""
        if self.engine == "compiled":
            return self._objective_from_yields(self.yields(params))
        # JAX-backed Awkward outputs under a transform cannot enter a jit-compiled function.
        return self.objective_from_yields(self.yields(params))

    def hard_objective(self, params: dict) -> float:
        """The objective with hard cuts and hard histograms: the honest evaluation."""
        return float(self._objective_from_yields(self.hard_yields(params)))

    # --- what the optimiser calls -----------------------------------------------------------

    def _loss(self, u, params_fixed, yields_fn):
        value = self.objective_from_yields(yields_fn(self.from_unit(u, params_fixed)))
        return -value if self.maximise else value

    def _loss_compiled(self, u, params_fixed, buffers):
        return self._loss(u, params_fixed, lambda p: self._kde_yields(
            self._region_events_compiled(p, buffers, hard=False)))

    def loss_and_grad(self, u, params_fixed: dict | None = None):
        """Loss (``-objective`` when maximised) and its gradient in unit-box coordinates."""
        params_fixed = params_fixed or self.initial_params()
        if self.engine == "compiled":
            return self._value_and_grad(u, params_fixed, self._buffers)
        # Awkward cannot be jit-compiled: differentiate the ragged stages eagerly and chain
        # them with the jit-compiled model and inference stages (∂loss/∂u = ∂loss/∂y · ∂y/∂u).
        y, pullback = jax.vjp(lambda v: self.yields(self.from_unit(v, params_fixed)), u)
        loss, dloss_dy = self._loss_of_yields(y)
        return loss, pullback(dloss_dy)[0]

    def sensitivity(self, params: dict) -> dict:
        """∂objective/∂θ split into the contribution of each region × sample's yields.

        Returns ``{param: {"region/sample": d}}`` with ``Σ d = ∂objective/∂param`` (the chain
        rule ``∂objective/∂yields · ∂yields/∂θ`` summed over bins, nominal and Σw² together).
        """
        theta = {n: params[n] for n in self.trainable}
        dobj_dy = self._dobjective_dyields(self.yields(params))
        if self.engine == "compiled":
            dy_dtheta = self._dyields_dtheta(theta, params, self._buffers)
        else:
            dy_dtheta = jax.jacfwd(lambda th: self.yields({**params, **th}))(theta)
        out: dict = {n: {} for n in self.trainable}
        for r in self.cfg.regions:
            for s in self.samples:
                for n in self.trainable:
                    d = sum(float(jnp.sum(dobj_dy[r][s][k] * dy_dtheta[r][s][k][n]))
                            for k in ("nominal", "sumw2"))
                    out[n][f"{r}/{s}"] = d
        return out
