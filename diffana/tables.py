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
import io
import math
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from diffana import ragged, report
from diffana.events import StreamedSet
from diffana.stages import cutflow_weights

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

    In memory from each event set's lowered events; streamed chunk by chunk from the files.
    None with the Dask executor (the events are on the workers).
    """
    if ana.cfg.executor.kind == "dask":
        return None
    return {sample: _sample_cutflow(ana, sample, params) for sample in ana.cfg.nominal_samples}


def _sample_cutflow(ana, sample: str, params: dict) -> list[tuple[str, float, int]]:
    sums: dict[str, np.ndarray] = {}
    for lowered in _lowered(ana, sample):
        ops = ragged.CompiledOps(ragged.to_device(lowered.buffers), lowered.n_events)
        weight = jnp.asarray(lowered.weight)
        for step, w in cutflow_weights(ana.cfg, ana.plan, ops, params,
                                       jnp.stack([weight, jnp.ones_like(weight)])):
            sums[step] = sums.get(step, 0.0) + np.asarray(w.sum(axis=-1))
    return [(step, float(w), int(round(float(n)))) for step, (w, n) in sums.items()]


def _lowered(ana, sample: str):
    """The lowered events of a nominal sample: all at once, or chunk by chunk."""
    events = ana.samples[sample].events
    if not isinstance(events, StreamedSet):
        yield events.lowered
        return
    for _, sets in events.reader.chunks(ana.cfg.chunk_size):
        chunk, weight = sets[events.key]
        yield ragged.lower(chunk, ana.plan, weight)


def cutflow_rows(flows: dict) -> list[CutflowRow]:
    """``flows[stage][sample] = [(step, weighted, raw)]`` → one row per sample and step."""
    return [CutflowRow(sample, step, w0, n0, w1, n1)
            for sample, steps in flows["initial"].items()
            for (step, w0, n0), (_, w1, n1) in zip(steps, flows["final"][sample], strict=True)]


def write_csv(path: Path, rows: list[NamedTuple]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(rows[0]._fields if rows else [])
    writer.writerows([[repr(v) if isinstance(v, float) else v for v in r] for r in rows])
    report.write_atomic(path, text.getvalue())


def write(out_dir: Path, hists: dict, flows: dict) -> None:
    """``yields.csv`` and ``cutflow.csv`` (removed when there is no cutflow) of a run."""
    write_csv(out_dir / YIELDS, yield_rows(hists))
    if flows["final"] is None:
        (out_dir / CUTFLOW).unlink(missing_ok=True)
    else:
        write_csv(out_dir / CUTFLOW, cutflow_rows(flows))


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
    shown = yields_table(read_csv(out_dir / YIELDS), samples)
    files = " and ".join(f for f in (YIELDS, CUTFLOW) if (out_dir / f).exists())
    return f"{shown}\n(every template, and the cutflow: {files})"
