"""Physics guard rails: results that look absurd are flagged, not silently optimised.

Each check is a pure function of numbers a run already has (hard histograms, soft yields,
the gradient at the start, the parameters, the objectives) and returns a list of
:class:`Flag` records; :func:`run_flags` gathers them for ``results.json`` (``warnings``).

Example:
    >>> import numpy as np
    >>> flags = negative_bins({"SR": {"wjets": (np.array([3.0, -2.0]), np.array([1.0, 4.0]))}},
    ...                       "final")
    >>> flags[0].code, flags[0].where
    ('negative-bins', 'final/SR/wjets')
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from diffana.plan import ParameterSpace

# the share of a region's background that the per-bin floor may make up before the objective
# is said to be dominated by it
FLOOR_SHARE = 0.5
# soft and hard objectives differ by more than this fraction of the larger one (and by more
# than ABSOLUTE_GAP): the soft cuts no longer stand for the hard ones
RELATIVE_GAP = 0.5
ABSOLUTE_GAP = 0.1
# a parameter within this fraction of its range from a bound ends on it
AT_BOUND = 1e-3


class Flag(NamedTuple):
    """One warning: a stable ``code``, a sentence for the physicist, and ``where`` it applies."""

    code: str
    message: str
    where: str


def line(flag: Flag | dict) -> str:
    """The one line a warning is printed as (a :class:`Flag`, or its ``results.json`` dict)."""
    code, message, where = (flag.code, flag.message, flag.where) if isinstance(flag, Flag) else (
        flag["code"], flag["message"], flag["where"])
    return f"warning [{code}] {where}: {message}"


def _bins(values: np.ndarray, test) -> str:
    return ", ".join(str(i) for i in np.flatnonzero(test(values)))


def background_yields(totals: dict, background: list[str], stage: str) -> list[Flag]:
    """Backgrounds, and the total, with zero or negative yield in a region; bins where some
    sample has events but the total background is zero or negative.

    ``totals[region][sample]``: the per-bin yields (hard histograms' values).
    """
    flags = []
    for region, samples in totals.items():
        for sample in [*background, "total"]:
            y = np.sum(list(samples.values()), axis=0) if sample == "total" else samples[sample]
            if np.sum(y) <= 0:
                flags.append(Flag(f"{'background' if sample != 'total' else 'total'}-nonpositive",
                                  f"{sample} yield {np.sum(y):.6g} in {region}: the "
                                  "significance is not bounded by it", f"{stage}/{region}/"
                                  f"{sample}"))
        total = np.sum([np.asarray(samples[s]) for s in background], axis=0)
        others = np.sum([np.asarray(y) for s, y in samples.items() if s not in background],
                        axis=0)
        empty = (total <= 0) & (others > 0)
        if background and empty.any():
            flags.append(Flag("background-bin-nonpositive",
                              f"total background ≤ 0 in bins {_bins(empty, lambda e: e)} of "
                              f"{region}, where the signal is not (only the per-bin floor is "
                              "left there)", f"{stage}/{region}"))
    return flags


def negative_bins(hists: dict, stage: str) -> list[Flag]:
    """Hard-histogram bins with a negative sum of weights (negative generator weights).

    ``hists[region][sample] = (values, variances)``. The likelihood takes them as they are
    (plus the per-bin floor): nothing is clipped.
    """
    flags = []
    for region, samples in hists.items():
        for sample, (values, _) in samples.items():
            values = np.asarray(values)
            if (values < 0).any():
                flags.append(Flag(
                    "negative-bins",
                    f"{sample} has negative yields in bins {_bins(values, lambda v: v < 0)} of "
                    f"{region} (lowest {values.min():.6g}); the likelihood uses them as they "
                    "are (plus the floor, nothing clipped): the hard objective is not reliable",
                    f"{stage}/{region}/{sample}"))
    return flags


def floor_dominated(yields: dict, floors: dict[str, float], background: list[str],
                    stage: str) -> list[Flag]:
    """Regions whose soft background yield is mostly the per-bin floor (``floors[region]``).

    ``yields[region][sample]["nominal"]``: soft yields with the floor added.
    """
    flags = []
    for region, samples in yields.items():
        nominal = [np.asarray(samples[s]["nominal"]) for s in background]
        if not nominal:
            continue
        total = float(sum(n.sum() for n in nominal))
        floor = floors[region] * sum(n.size for n in nominal)
        if total > 0 and floor >= FLOOR_SHARE * total:
            flags.append(Flag("floor-dominated",
                              f"the per-bin floor ({floors[region]:g} per bin and sample) is "
                              f"{floor / total:.0%} of the background in {region}: the soft "
                              "objective measures the floor, not the selection",
                              f"{stage}/{region}"))
    return flags


def unused_parameters(gradient, trainable: list[str]) -> list[Flag]:
    """Trainable parameters whose gradient at the start is exactly zero."""
    return [Flag("parameter-unused",
                 f"{name}: gradient exactly 0 at the start; no cut uses it, or no event is near "
                 "its threshold; the optimiser cannot move it", name)
            for name, g in zip(trainable, np.asarray(gradient).reshape(-1), strict=True)
            if g == 0.0]


def on_bounds(params: dict, bounds: dict[str, tuple[float, float]]) -> list[Flag]:
    """Trainable parameters that end on (within :data:`AT_BOUND` of the range of) a bound."""
    flags = []
    for name, (lo, hi) in bounds.items():
        value = float(params[name])
        for side, bound in (("lower", lo), ("upper", hi)):
            if abs(value - bound) <= AT_BOUND * (hi - lo):
                flags.append(Flag("parameter-at-bound",
                                  f"{name} = {value:.6g} ends on its {side} bound {bound:g}: "
                                  "the optimum may lie beyond it", name))
    return flags


def soft_hard_gap(soft: float, hard: float, stage: str) -> list[Flag]:
    """Soft and hard objectives far apart (the soft cuts no longer stand for the hard ones)."""
    gap = abs(soft - hard)
    if not (np.isfinite(soft) and np.isfinite(hard)):
        return []
    if gap > ABSOLUTE_GAP and gap > RELATIVE_GAP * max(abs(soft), abs(hard)):
        return [Flag("soft-hard-gap", f"soft objective {soft:.6g} and hard objective {hard:.6g} "
                     "are far apart: lower the temperatures or widen the bins", stage)]
    return []


def run_flags(cfg, hists: dict, soft_yields: dict, gradient, params_final: dict,
              objectives: dict) -> list[Flag]:
    """Every check on a finished run.

    Args:
        cfg: the configuration (samples, signal, floors, parameter bounds).
        hists: ``[stage][region][sample]`` hard histograms (``.values()``, ``.variances()``).
        soft_yields: ``{stage: [region][sample]["nominal"]}`` soft yields (floor included).
        gradient: ∂loss/∂u of the trainable parameters at the start (None: not checked).
        params_final: every parameter at the end.
        objectives: ``{stage: (soft, hard)}``.
    """
    background = [s for s in cfg.nominal_samples if s not in cfg.model.signal]
    floors = {r: reg.floor for r, reg in cfg.regions.items()}
    trainable = ParameterSpace.of(cfg).trainable
    flags: list[Flag] = []
    for stage, regions in hists.items():
        nominal = {r: {s: regions[r][s] for s in cfg.nominal_samples} for r in regions}
        flags += background_yields({r: {s: h.values() for s, h in hs.items()}
                                    for r, hs in nominal.items()}, background, stage)
        flags += negative_bins({r: {s: (h.values(), h.variances()) for s, h in hs.items()}
                                for r, hs in nominal.items()}, stage)
    for stage, yields in soft_yields.items():
        flags += floor_dominated(yields, floors, background, stage)
    if gradient is not None:
        flags += unused_parameters(gradient, trainable)
    flags += on_bounds(params_final, {n: tuple(cfg.parameters[n].bounds) for n in trainable})
    for stage, (soft, hard) in objectives.items():
        flags += soft_hard_gap(soft, hard, stage)
    return flags
