"""The run directory: its files, written atomically, and the summary tables printed at the end.

Layout (stable: other tools read it)::

    config.resolved.yaml   the configuration with every default filled in
    history.csv            step, objective, one column per trainable parameter (row per step)
    results.json           objective and parameters before/after, hard-cut evaluation,
                           sensitivity, engine, events per sample, wall time
    workspace.json         the pyhf workspace at the optimum (Asimov observations)
    workspace_hard.json    the pyhf workspace of the final cuts' hard histograms (pseudodata or
                           Asimov observations)
    inference.json         its limits with their band, significance, impacts, likelihood scan
                           and correlations (``inference: false``: none), and its figures
                           cls_scan, ranking, likelihood_scan and correlation (PNG and PDF)
    histograms.root        hard histograms before/after, ``{initial,final}/{region}/{sample}``,
                           and the pseudodata ``{initial,final}/{region}/pseudodata``
    sensitivity.csv        ∂objective/∂θ per parameter × region × sample × variation, with the
                           sample, variation and systematic of each template
    objective_history.png, histograms.png, sensitivity.png, and each as .pdf
    yields.csv             hard-cut yield ± MC stat. uncertainty per region × sample, before/after
    cutflow.csv            events (weighted, raw) after each selection step per sample, before/after
    checkpoint.npz         only in an interrupted run: where ``diffana run --resume`` continues
    .diffana-run.json      the manifest: the files diffana writes there (``RUN_FILES``)
    .diffana-run.lock      locked (``flock``) by the run writing there, with its PID

Every file but ``history.csv`` (appended and flushed row by row) is written to a temporary
name, synced and renamed (:mod:`diffana.files`), and ``results.json`` is written last: a
directory without it is a run that has not finished. diffana removes or replaces only the files
the manifest names; a user's files in the directory are never touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from diffana import breakdown, files, guards, locks, plot_inference
from diffana.exceptions import DiffanaError
from diffana.files import write_atomic

CHECKPOINT = "checkpoint.npz"
MANIFEST = ".diffana-run.json"
LOCK = ".diffana-run.lock"
# every file diffana run writes into a run directory (a new one is added here)
SENSITIVITY_CSV = "sensitivity.csv"
#: the figures, each written as PNG and PDF
FIGURES = ("objective_history", "histograms", "sensitivity")
RUN_FILES = ("config.resolved.yaml", "history.csv", "results.json", "workspace.json",
             "histograms.root", *[f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")],
             SENSITIVITY_CSV, "yields.csv", "cutflow.csv", CHECKPOINT, "workspace_hard.json",
             "inference.json",
             *[f"{f}.{ext}" for f in plot_inference.FIGURES for ext in ("png", "pdf")])
# removed when a run starts in the directory again
STARTS_OVER = ("results.json", CHECKPOINT, "inference.json")


class RunDirectory:
    """The directory a run writes into, locked against a second run for as long as it is open.

    ``open(path)`` creates ``path``, or takes a diffana run directory (one with the manifest) or
    an empty directory as it is; a directory holding anything else only with ``force``, and even
    then diffana touches none of its files, and refuses if one of them has a name in
    ``RUN_FILES``. ``resume(path)`` locks an interrupted run's directory.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder, RunDirectory() as held:
        ...     out = held.open(Path(folder) / "run")
        ...     sorted(p.name for p in out.iterdir())
        ['.diffana-run.json', '.diffana-run.lock']
    """

    def __init__(self):
        self._held = ExitStack()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, path: Path, *, force: bool = False) -> Path:
        """Create or take ``path`` for a new run: lock it, write the manifest, and remove the
        previous run's ``results.json`` and checkpoint (a rerun starts over).

        Raises:
            DiffanaError: ``path`` holds a finished run or files diffana did not write (both
                without ``force``), or a file named like one diffana writes, or another run is
                writing there.
            OutputError: ``path`` cannot be created or written.
        """
        if path.is_dir():  # refused before anything is written there
            _owned(path, force)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise files.cannot("create", path, err) from None
        self._lock(path)
        owned = _owned(path, force)  # again: it is ours now, no other run writes there
        if "results.json" in owned and (path / "results.json").exists() and not force:
            raise DiffanaError(f"{path}: holds a finished run (results.json); choose another "
                               f"--out, or --force to run again into it")
        manifest = {"format": 1, "files": sorted(owned | set(RUN_FILES))}
        write_atomic(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        for name in STARTS_OVER:
            if name in owned:
                _remove(path / name)
        return path

    def resume(self, path: Path) -> Path:
        """Lock the directory of an interrupted run (what it holds is checked by the caller)."""
        if not path.is_dir():
            raise DiffanaError(f"{path}: no such run directory; nothing to resume")
        self._lock(path)
        return path

    def close(self) -> None:
        """Release the lock."""
        self._held.close()

    def _lock(self, path: Path) -> None:
        def refuse(pid: int | None):
            raise DiffanaError(f"{path}: in use by process {pid or '(starting)'} (a diffana run "
                               f"writes there; wait for it, or choose another directory)")

        try:
            self._held.enter_context(locks.exclusive(path / LOCK, on_wait=refuse))
        except OSError as err:
            raise files.cannot("write", path, err) from None


def _owned(path: Path, force: bool) -> set[str]:
    """The names in ``path`` that diffana wrote (the manifest's), after checking that a run may
    write there."""
    try:
        entries = set(os.listdir(path)) - {MANIFEST, LOCK}
    except OSError as err:
        raise files.cannot("read", path, err) from None
    owned = _manifest(path / MANIFEST)
    if owned is None and "config.resolved.yaml" in entries and entries <= set(RUN_FILES):
        owned = entries  # a run directory written before there were manifests
    if owned is None and entries and not force:
        raise DiffanaError(f"{path}: not empty and not a diffana run directory (no {MANIFEST}); "
                           f"choose another --out, or --force to write beside its files")
    owned = owned or set()
    clash = sorted(entries & set(RUN_FILES) - owned)
    if clash:
        raise DiffanaError(f"{path / clash[0]}: not written by diffana, and diffana run writes "
                           f"a file of that name; move it, or choose another --out")
    return owned


def _manifest(path: Path) -> set[str] | None:
    """The files a run directory's manifest names (None: no readable manifest)."""
    try:
        return set(json.loads(path.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise files.cannot("remove", path, err) from None


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
        self._path = path
        with self._writing():
            self._file = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self._writer = csv.writer(self._file)

    @staticmethod
    def _cells(step: int, objective: float, params: list[float]) -> list:
        return [step, repr(float(objective)), *[repr(float(p)) for p in params]]

    def row(self, step: int, objective: float, params: list[float]) -> None:
        with self._writing():
            self._writer.writerow(self._cells(step, objective, params))
            self._file.flush()

    def close(self) -> None:
        with self._writing():
            self._file.close()

    @contextmanager
    def _writing(self):
        try:
            yield
        except OSError as err:
            raise files.cannot("write", self._path, err) from None


def read_history(path: Path) -> dict[str, np.ndarray]:
    """``history.csv`` as columns."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.array(rows[1:], dtype=np.float64).reshape(-1, len(rows[0]))
    return {name: body[:, i] for i, name in enumerate(header)}


def write_root_histograms(path: Path, hists: dict[str, dict],
                          data: dict[str, dict | None] | None = None,
                          axis_labels: dict[str, str] | None = None,
                          data_name: str = "pseudodata") -> None:
    """``hists[stage][region][sample]`` and ``data[stage][region]`` (``hist.Hist``; as
    ``{stage}/{region}/{data_name}``) into a ROOT file with uproot, each TH1 titled
    ``"<sample>, <region>, <stage> cuts"``, its x axis titled ``axis_labels[region]``."""
    import uproot

    def titled(h, title: str, region: str):
        h = h.copy()
        h.name = title  # uproot's TH1 fTitle
        h.axes[0].label = (axis_labels or {}).get(region, h.axes[0].label)
        return h

    with files.replacing(path) as tmp, uproot.recreate(tmp) as f:
        for stage, regions in hists.items():
            for region, samples in regions.items():
                observed = (data or {}).get(stage)
                extra = {data_name: observed[region]} if observed is not None else {}
                for sample, h in {**samples, **extra}.items():
                    f[f"{stage}/{region}/{sample}"] = titled(h, f"{sample}, {region}, {stage} "
                                                               f"cuts", region)


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


def summary(results: dict, cfg=None, top: int = 2) -> str:
    """The end-of-run summary: objective and parameters before/after, and the sensitivity
    summed by sample (nominal and its variations), by region and by systematic, each group
    its ``top`` largest and the rest as one row (``cfg`` says which template belongs to which
    sample and systematic; without it every template is a sample of its own)."""
    kind = results["objective"]
    executor = results.get("executor", "local")
    where = "" if executor == "local" else f" on {executor}"
    if results.get("streaming", {}).get("streamed"):  # why: in results.json
        where += ", streamed"
    lines = [f"{results['config']}: {kind} ({results['engine']} engine{where}, "
             f"{results['steps_done']} steps, stopped: {results['stopped']}, "
             f"{results['wall_seconds']:.1f} s)"]
    rows = [
        ["objective (soft cuts)", f"{results['objective_initial']:.6g}",
         f"{results['objective_final']:.6g}"],
        ["objective (hard cuts)", f"{results['hard']['objective_initial']:.6g}",
         f"{results['hard']['objective_final']:.6g}"],
    ]
    if "hard_train" in results:  # split: hard is on the test events; beside it the training's
        rows[0][0], rows[1][0] = ("objective (soft cuts, training events)",
                                  "objective (hard cuts, test events)")
        rows.append(["objective (hard cuts, training events)",
                     f"{results['hard_train']['objective_initial']:.6g}",
                     f"{results['hard_train']['objective_final']:.6g}"])
    for name, v0 in results["params_initial"].items():
        rows.append([name, f"{v0:.6g}", f"{results['params_final'][name]:.6g}"])
    groups = results.get("parameter_groups", {})
    for name, sizes in groups.get("groups", {}).items():  # a network: one row, its gradient
        rows.append([f"{name}: {sizes.get('weights', 0)} weights, |∂objective/∂w|", "",
                     f"{sizes.get('gradient_norm', math.nan):.4g}"])
    lines.append(table(rows, ["", "initial", "final"]).rstrip("\n"))
    sens = results["sensitivity"]
    if sens:
        params = list(sens)
        contributions = breakdown.contributions(
            sens, breakdown.origins(cfg) if cfg is not None else None)
        srows = [[_group(by, group), *[f"{values[p]:+.4g}" for p in params]]
                 for by in breakdown.BY
                 for group, values in breakdown.leading(
                     breakdown.aggregate(contributions, by), top)]
        srows.append(["total ∂objective/∂θ", *[f"{sum(sens[p].values()):+.4g}" for p in params]])
        lines.append(f"sensitivity at the final cuts, ∂objective/∂θ from the yields of each "
                     f"sample, region, systematic (every template: {SENSITIVITY_CSV})")
        lines.append(table(srows, ["from", *params]).rstrip("\n"))
    lines += [guards.line(w) for w in results.get("warnings", [])]
    return "\n".join(lines)


def _group(by: str, group: str) -> str:
    """A row label of the sensitivity summary: ``sample ttbar``, ``nominal templates``."""
    return "nominal templates" if by == "systematic" and group == breakdown.NOMINAL else (
        f"{by} {group}")


def write_csv(path: Path, rows: list[tuple], header: list[str] | None = None) -> None:
    """Rows (named tuples: their fields are the header, unless ``header``) as CSV, floats
    written exactly (``repr``)."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header or (rows[0]._fields if rows else []))
    writer.writerows([[repr(v) if isinstance(v, float) else v for v in r] for r in rows])
    write_atomic(path, text.getvalue())


def write_sensitivity_csv(path: Path, sens: dict[str, dict[str, float]], cfg=None) -> None:
    """The sensitivity, one row per parameter × region × sample × variation (the template's
    nominal sample, its variation, empty for the nominal template, and the systematic)."""
    write_csv(path, breakdown.contributions(sens, breakdown.origins(cfg) if cfg is not None
                                            else None),
              ["parameter", "region", "template", "sample", "variation", "systematic",
               "d_objective"])
