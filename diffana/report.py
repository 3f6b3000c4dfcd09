"""The run directory: files written atomically, and the summary tables printed at the end.

Layout (stable: other tools read it)::

    config.resolved.yaml   the configuration with every default filled in
    history.csv            step, objective, one column per trainable parameter (row per step)
    results.json           objective and parameters before/after, hard-cut evaluation,
                           sensitivity, engine, events per sample, wall time
    workspace.json         the pyhf workspace at the optimum (Asimov observations)
    histograms.root        hard histograms before/after, ``{initial,final}/{region}/{sample}``
    objective_history.png, histograms.png, sensitivity.png
    checkpoint.npz         only in an interrupted run: where ``diffana run --resume`` continues

Every file but ``history.csv`` (appended and flushed row by row) is written to a temporary
name and renamed, and ``results.json`` is written last: a directory without it is a run
that has not finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write to ``path.part`` and rename: a reader never sees a half-written file."""
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def _replacing(path: Path):
    """Yields ``path.part`` to write; renames it to ``path`` on success, removes it otherwise."""
    tmp = path.with_name(path.name + ".part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class HistoryWriter:
    """``history.csv``, one row per optimiser step, flushed as the run goes.

    ``earlier``: rows ``(step, objective, params)`` of the steps an interrupted run completed;
    the file is rewritten with them (and nothing after them) before the run goes on.
    """

    def __init__(self, path: Path, param_names: list[str], earlier: Sequence[tuple] = ()):
        text = io.StringIO()
        csv.writer(text).writerow(["step", "objective", *param_names])
        for row in earlier:
            csv.writer(text).writerow(self._cells(*row))
        write_atomic(path, text.getvalue())
        self._file = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self._writer = csv.writer(self._file)

    @staticmethod
    def _cells(step: int, objective: float, params: list[float]) -> list:
        return [step, repr(float(objective)), *[repr(float(p)) for p in params]]

    def row(self, step: int, objective: float, params: list[float]) -> None:
        self._writer.writerow(self._cells(step, objective, params))
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

    with _replacing(path) as tmp:
        with uproot.recreate(tmp) as f:
            for stage, regions in hists.items():
                for region, samples in regions.items():
                    for sample, h in samples.items():
                        f[f"{stage}/{region}/{sample}"] = h


CHECKPOINT = "checkpoint.npz"


def write_checkpoint(path: Path, resume, meta: dict) -> None:
    """An interrupted optimisation, atomically: ``resume`` (:class:`diffana.optimise.Resume`,
    or None before the first step) as arrays, ``meta`` (where the run came from) as JSON.

    No pickle: the optimiser state is stored as its leaves, and put back into the structure
    of a fresh ``optax`` state when read.
    """
    arrays: dict[str, np.ndarray] = {}
    if resume is not None:
        meta = {**meta, "step": int(resume.step), "state_leaves": (
            None if resume.state is None else len(resume.state))}
        arrays["u"] = np.asarray(resume.u, dtype=np.float64)
        for i, leaf in enumerate(resume.state or []):
            arrays[f"state_{i}"] = np.asarray(leaf)
        arrays["history_step"] = np.array([h[0] for h in resume.history], dtype=np.int64)
        arrays["history_loss"] = np.array([h[1] for h in resume.history], dtype=np.float64)
        arrays["history_u"] = np.array([np.asarray(h[2]) for h in resume.history],
                                       dtype=np.float64).reshape(-1, arrays["u"].size)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps({"format": 1, **meta})), **arrays)
    write_atomic(path, buffer.getvalue())


def read_checkpoint(path: Path):
    """``(resume, meta)`` from :func:`write_checkpoint` (``resume`` None if it has none)."""
    from diffana.optimise import Resume

    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        if meta.get("format") != 1:
            raise ValueError(f"unknown checkpoint format {meta.get('format')!r}")
        if "u" not in f:
            return None, meta
        n = meta["state_leaves"]
        state = None if n is None else [f[f"state_{i}"] for i in range(n)]
        history = [(int(s), float(v), u) for s, v, u in
                   zip(f["history_step"], f["history_loss"], f["history_u"], strict=True)]
        return Resume(int(meta["step"]), f["u"], state, history), meta


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
