"""The run directory: files written atomically, and the summary tables printed at the end.

Layout (stable: other tools read it)::

    config.resolved.yaml   the configuration with every default filled in
    history.csv            step, objective, one column per trainable parameter (row per step)
    results.json           objective and parameters before/after, hard-cut evaluation,
                           sensitivity, engine, events per sample, wall time
    workspace.json         the pyhf workspace at the optimum (Asimov observations)
    histograms.root        hard histograms before/after, ``{initial,final}/{region}/{sample}``
    objective_history.png, histograms.png, sensitivity.png
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np


def write_atomic(path: Path, text: str) -> None:
    """Write to ``path.part`` and rename: a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class HistoryWriter:
    """``history.csv``, one row per optimiser step, flushed as the run goes."""

    def __init__(self, path: Path, param_names: list[str]):
        self._file = open(path, "w", newline="")  # noqa: SIM115 - kept open for the run
        self._writer = csv.writer(self._file)
        self._writer.writerow(["step", "objective", *param_names])
        self._file.flush()

    def row(self, step: int, objective: float, params: list[float]) -> None:
        self._writer.writerow([step, repr(float(objective)), *[repr(float(p)) for p in params]])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_history(path: Path) -> dict[str, np.ndarray]:
    """``history.csv`` as columns."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.array(rows[1:], dtype=np.float64).reshape(-1, len(rows[0]))
    return {name: body[:, i] for i, name in enumerate(header)}


def write_root_histograms(path: Path, hists: dict[str, dict]) -> None:
    """``hists[stage][region][sample]`` (``hist.Hist``) into a ROOT file with uproot."""
    import uproot

    tmp = path.with_name(path.name + ".part")
    with uproot.recreate(tmp) as f:
        for stage, regions in hists.items():
            for region, samples in regions.items():
                for sample, h in samples.items():
                    f[f"{stage}/{region}/{sample}"] = h
    os.replace(tmp, path)


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = io.StringIO()
    for k, r in enumerate(cells):
        out.write("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                            enumerate(zip(r, widths, strict=True))).rstrip() + "\n")
        if k == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    return out.getvalue()


def summary(results: dict) -> str:
    """The end-of-run summary: objective and parameters before/after, and the sensitivity."""
    kind = results["objective"]
    lines = [f"{results['config']}: {kind} ({results['engine']} engine, "
             f"{results['steps_done']} steps, stopped: {results['stopped']}, "
             f"{results['wall_seconds']:.1f} s)"]
    rows = [
        ["objective (soft cuts)", f"{results['objective_initial']:.6g}",
         f"{results['objective_final']:.6g}"],
        ["objective (hard cuts)", f"{results['hard']['objective_initial']:.6g}",
         f"{results['hard']['objective_final']:.6g}"],
    ]
    for name, v0 in results["params_initial"].items():
        rows.append([name, f"{v0:.6g}", f"{results['params_final'][name]:.6g}"])
    lines.append(table(rows, ["", "initial", "final"]))
    sens = results["sensitivity"]
    if sens:
        params = list(sens)
        keys = list(next(iter(sens.values())))
        srows = [[k, *[f"{sens[p][k]:+.4g}" for p in params]] for k in keys]
        srows.append(["total ∂objective/∂θ", *[f"{sum(sens[p].values()):+.4g}" for p in params]])
        lines.append("sensitivity at the final cuts: ∂objective/∂θ from each region/sample's yields")
        lines.append(table(srows, ["region/sample", *params]))
    return "\n".join(lines)
