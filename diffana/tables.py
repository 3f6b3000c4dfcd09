"""Yield and cutflow tables of a run: ``yields.csv`` and ``cutflow.csv``, and their printout.

``yields.csv``: the hard-cut yield of every region × sample with its MC statistical
uncertainty (``√Σw²``) at the initial and final cuts, from the hard histograms.
``cutflow.csv``: per nominal sample, the events (weighted and raw) left after each hard
selection step (:func:`diffana.stages.cutflow_weights`) at the initial and final cuts.

Example:
    >>> import hist
    >>> h = hist.Hist.new.Regular(2, 0, 2).Weight()
    >>> _ = h.fill([0.5, 1.5, 1.5], weight=[1.0, 2.0, 2.0])
    >>> rows = yield_rows({"initial": {"SR": {"ttbar": h}}, "final": {"SR": {"ttbar": h}}})
    >>> rows[0].final, rows[0].final_unc
    (5.0, 3.0)
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from diffana import report
from diffana.stages import cutflow_steps

YIELDS = "yields.csv"
CUTFLOW = "cutflow.csv"


class YieldRow(NamedTuple):
    """A region × sample's hard-cut yield and its MC statistical uncertainty."""

    region: str
    sample: str
    initial: float
    initial_unc: float
    final: float
    final_unc: float


class CutflowRow(NamedTuple):
    """A sample's events after one selection step: weighted and raw, initial and final."""

    sample: str
    step: str
    initial_weighted: float
    initial_raw: int
    final_weighted: float
    final_raw: int


def yield_rows(hists: dict) -> list[YieldRow]:
    """``hists[stage][region][sample]`` (``hist.Hist``, Weight storage) → one row each."""
    def total(h) -> tuple[float, float]:
        return float(h.values().sum()), math.sqrt(float(h.variances().sum()))

    return [YieldRow(region, sample, *total(h), *total(hists["final"][region][sample]))
            for region, samples in hists["initial"].items() for sample, h in samples.items()]


def cutflow(ana, params: dict) -> dict[str, list[tuple[str, float, int]]] | None:
    """``{sample: [(step, weighted, raw)]}`` of every nominal sample at ``params``.

    Evaluated where the events are (:meth:`diffana.executors.Executor.cutflow_parts`: the
    compiled chunk function in memory or streamed); None with the Dask executor. With a
    ``split`` the cutflow counts the test events (weights × 1/f), as the hard evaluations do.
    """
    parts = ana.executor.cutflow_parts(params)
    if parts is None:
        return None
    kernel = ana.executor.kernel
    nominal = set(ana.cfg.nominal_samples)
    sums: dict[str, np.ndarray] = {}
    for g, steps in parts:
        for sample, variant in kernel.groups[g].items():
            if sample in nominal and variant is None:
                total = np.asarray(steps.sum(axis=-1))
                sums[sample] = sums[sample] + total if sample in sums else total
    names = cutflow_steps(ana.cfg, ana.plan)
    return {s: [(step, float(w), int(round(float(n)))) for step, (w, n) in zip(names, sums[s],
                                                                                 strict=True)]
            for s in ana.cfg.nominal_samples}


def cutflow_rows(flows: dict) -> list[CutflowRow]:
    """``flows[stage][sample] = [(step, weighted, raw)]`` → one row per sample and step."""
    return [CutflowRow(sample, step, w0, n0, w1, n1)
            for sample, steps in flows["initial"].items()
            for (step, w0, n0), (_, w1, n1) in zip(steps, flows["final"][sample], strict=True)]


def write(out_dir: Path, hists: dict, flows: dict) -> None:
    """``yields.csv`` and ``cutflow.csv`` (removed when there is no cutflow) of a run."""
    report.write_csv(out_dir / YIELDS, yield_rows(hists))
    if flows["final"] is None:
        (out_dir / CUTFLOW).unlink(missing_ok=True)
    else:
        report.write_csv(out_dir / CUTFLOW, cutflow_rows(flows))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def yields_table(rows: list[dict], samples: list[str] | None = None) -> str:
    """The yields as printed (rows of ``yields.csv``): a row per sample (``samples``, default
    all), initial and final columns per region."""
    def cell(r, stage) -> str:
        return f"{float(r[stage]):.6g} ± {float(r[stage + '_unc']):.2g}"

    regions = list(dict.fromkeys(r["region"] for r in rows))
    samples = samples or list(dict.fromkeys(r["sample"] for r in rows))
    by = {(r["region"], r["sample"]): r for r in rows}
    return report.table(
        [[s, *[cell(by[g, s], stage) for g in regions for stage in ("initial", "final")]]
         for s in samples if all((g, s) in by for g in regions)],
        ["hard-cut yield", *[f"{g} {stage}" for g in regions for stage in ("initial", "final")]])


def summary(out_dir: Path, samples: list[str] | None = None) -> str:
    """The yields of a run directory as printed at the end of a run (``samples``: the rows
    shown, e.g. the nominal ones); every template's, and the cutflow, are in the files."""
    shown = yields_table(read_csv(out_dir / YIELDS), samples).rstrip("\n")
    files = " and ".join(f for f in (YIELDS, CUTFLOW) if (out_dir / f).exists())
    return f"{shown}\nrun directory: {out_dir} (every template, and the cutflow: {files})"
