"""The sensitivity broken down the way a physicist reads it: by sample, region and systematic.

:meth:`diffana.analysis.Analysis.sensitivity` gives ``{param: {"region/template": d}}``, one
entry per region × template, where a template is a nominal sample, a computed variation
``S_<variation>`` or a sample with ``variation_of: S``. :func:`origins` says which sample,
variation and systematic each template belongs to, :func:`contributions` flattens the
sensitivity into one row per parameter × region × template (``sensitivity.csv``), and
:func:`aggregate` and :func:`leading` sum and rank them (the summary and ``sensitivity.png``).

Example:
    >>> sens = {"jet_pt_min": {"SR/ttbar": 0.5, "SR/ttbar_jes_up": 0.25, "CR/wjets": -1.0}}
    >>> where = {"ttbar": Origin("ttbar", "", NOMINAL),
    ...          "ttbar_jes_up": Origin("ttbar", "jes_up", "jes"),
    ...          "wjets": Origin("wjets", "", NOMINAL)}
    >>> rows = contributions(sens, where)
    >>> aggregate(rows, "sample")
    {'jet_pt_min': {'ttbar': 0.75, 'wjets': -1.0}}
    >>> leading(aggregate(rows, "region"), 1)
    [('CR', {'jet_pt_min': -1.0}), ('SR', {'jet_pt_min': 0.75})]
    >>> leading({"z": {"a": 3.0, "b": -2.0, "c": 0.5, "d": 0.25}}, 1)
    [('a', {'z': 3.0}), ('other (3)', {'z': -1.25})]
"""

from __future__ import annotations

from typing import NamedTuple

from diffana.naming import variation_key
from diffana.systematics import SYSTEMATICS

__all__ = ["BY", "NOMINAL", "UNUSED", "Contribution", "Origin", "aggregate", "contributions",
           "leading", "origins"]

#: the systematic of a nominal template's contribution
NOMINAL = "nominal"
#: the systematic of a variation no systematic of the model uses (e.g. only pseudodata)
UNUSED = "(none)"
#: what :func:`aggregate` can group by
BY = ("sample", "region", "systematic")


class Origin(NamedTuple):
    """Where a template comes from: its nominal ``sample``, the ``variation`` ("" for the
    nominal template) and the model's ``systematic`` using it (:data:`NOMINAL`, :data:`UNUSED`)."""

    sample: str
    variation: str
    systematic: str


class Contribution(NamedTuple):
    """One term of ∂objective/∂``param``: the yields of ``template`` in ``region``."""

    param: str
    region: str
    template: str
    sample: str
    variation: str
    systematic: str
    value: float


def origins(cfg) -> dict[str, Origin]:
    """``{template: Origin}`` for every sample of ``cfg`` and every computed variation."""
    used: dict[str, str] = {}
    for syst in cfg.model.systematics:
        kind = SYSTEMATICS[syst.type]
        for sample in kind.samples(syst, cfg.nominal_samples):
            for template in kind.templates(syst, sample):
                used.setdefault(template, syst.name)
    found = {s: Origin(s, "", NOMINAL) for s in cfg.nominal_samples}
    for name, s in cfg.samples.items():
        if s.variation_of is not None:
            prefix = variation_key(s.variation_of, "")
            variation = name[len(prefix):] if name.startswith(prefix) else name
            found[name] = Origin(s.variation_of, variation, used.get(name, UNUSED))
    for template, (sample, variation) in cfg.variation_samples().items():
        found[template] = Origin(sample, variation, used.get(template, UNUSED))
    return found


def contributions(sens: dict[str, dict[str, float]],
                  where: dict[str, Origin] | None = None) -> list[Contribution]:
    """One row per parameter × region × template; a template ``where`` does not know is a
    nominal sample of its own."""
    where = where or {}
    rows = []
    for param, terms in sens.items():
        for key, value in terms.items():
            region, template = key.split("/", 1)
            origin = where.get(template, Origin(template, "", NOMINAL))
            rows.append(Contribution(param, region, template, *origin, float(value)))
    return rows


def aggregate(rows: list[Contribution], by: str) -> dict[str, dict[str, float]]:
    """``{param: {group: Σ value}}`` grouped ``by`` one of :data:`BY`, in order of appearance."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        group = totals.setdefault(row.param, {})
        key = getattr(row, by)
        group[key] = group.get(key, 0.0) + row.value
    return totals


def leading(totals: dict[str, dict[str, float]], n: int) -> list[tuple[str, dict[str, float]]]:
    """The ``n`` groups of ``totals`` (:func:`aggregate`) with the largest ``|value|`` for any
    parameter, then one ``other (k)`` row summing the ``k`` others (none when at most one is
    left over: its own name says more): ``[(group, {param: value})]``."""
    params = list(totals)
    groups = list(dict.fromkeys(g for per_param in totals.values() for g in per_param))

    def row(group: str) -> dict[str, float]:
        return {p: totals[p].get(group, 0.0) for p in params}

    ranked = sorted(groups, key=lambda g: -max(abs(v) for v in row(g).values()))
    if len(ranked) <= n + 1:
        return [(g, row(g)) for g in ranked]
    rest = [row(g) for g in ranked[n:]]
    return [*[(g, row(g)) for g in ranked[:n]],
            (f"other ({len(rest)})", {p: sum(r[p] for r in rest) for p in params})]
