"""``diffana fit``: the statistical model built from histograms and fitted to data.

This is cabinetry's histogram mode with diffana's model: the histograms come from a file
instead of from the event selection. The file is either

* a JSON file in the layout of the AGC reference histograms,
  ``{"<region>_<sample>[_<variation>]": {"edges": [...], "contents": [...]}}`` (``contents``
  with or without the under/overflow bins; an optional ``"variances"`` of the same length),
* or a ROOT file with one TH1 per key of the same name (read with uproot).

For each region of the configuration the histograms are rebinned to the region's ``binning``
(whose edges must be a subset of the file's; under/overflow and bins outside the region's
range are dropped, as cabinetry does when it slices and rebins). The pyhf spec is then built
by :func:`diffana.spec.build` (staterror, normfactor, normsys, histosys, normplusshape, lumi
as configured) with the observations from ``<region>_<data>`` (default ``pseudodata``),
fitted with :func:`diffana.infer.fit`, and the uncertainties are the square roots of the
diagonal of ``2 H⁻¹``, ``H`` the autodiff Hessian of ``-2 ln L`` at the minimum.

MC statistical uncertainties (``staterror``) need the variance of each nominal template. The
AGC fills a nominal template with one weight per sample, ``w = σ·L/N_total``, so its variance is
``w·Σw`` bin by bin. ``N_total`` comes, in this order, from ``n_total`` given to
:func:`build_workspace` (the CLI's ``--n-total SAMPLE=N`` or ``--nanoaod-inputs FILE
--files-per-process N``, see :func:`agc_n_total`) or from ``samples.<name>.n_total`` in the
configuration; ``σ`` is ``samples.<name>.cross_section`` and ``L`` the configuration's
``luminosity``. Without ``N_total``, the variances stored in the file are used (a ROOT
histogram's ``Σw²``, or ``"variances"`` in JSON); without either, it is an error.

Example:
    >>> from diffana.histfit import agc_n_total, fit_histograms        # doctest: +SKIP
    >>> n_total = agc_n_total("nanoaod_inputs.json", files_per_process=5)  # doctest: +SKIP
    >>> fit_histograms("configs/agc_ttbar.yaml", "histos_5_file_per_process.json",
    ...                "runs/agc-fit", n_total=n_total)                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffana import config as configmod
from diffana import report, spec
from diffana.config import AnalysisConfig
from diffana.exceptions import DataError, DiffanaError
from diffana.infer import fit
from diffana.io import similar_names
from diffana.model import Model

jax.config.update("jax_enable_x64", True)

__all__ = [
    "FitSummary",
    "Histogram",
    "agc_n_total",
    "build_workspace",
    "event_weights",
    "fit_histograms",
    "fit_workspace",
    "read_histograms",
    "rebin",
    "summary",
]


class Histogram(NamedTuple):
    """A 1D histogram without flow bins: ``edges`` (n + 1), ``values`` and ``variances`` (n)."""

    edges: np.ndarray
    values: np.ndarray
    variances: np.ndarray | None


class FitSummary(NamedTuple):
    """Result of :func:`fit_workspace`, one entry per scalar parameter in pyhf order.

    ``uncertainty`` is ``sqrt(diag(2 H⁻¹))`` over the free parameters (0 for parameters pyhf
    fixes, NaN where the Hessian gives no positive variance). ``constraints`` maps each
    Gaussian-constrained nuisance parameter other than staterror to its ``(centre, width)``:
    what its pull is measured against.
    """

    poi: str
    names: list[str]
    bestfit: np.ndarray
    uncertainty: np.ndarray
    twice_nll: float
    converged: bool
    constraints: dict[str, tuple[float, float]]

    def to_json(self) -> dict:
        """The content of ``fit.json``."""

        def number(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "parameters": {n: {"bestfit": float(b), "uncertainty": number(u)}
                           for n, b, u in zip(self.names, self.bestfit, self.uncertainty,
                                              strict=True)},
            "twice_nll": float(self.twice_nll),
            "poi": self.poi,
            "converged": bool(self.converged),
        }

    def value(self, name: str) -> tuple[float, float]:
        """``(best fit, uncertainty)`` of a parameter."""
        i = self.names.index(name)
        return float(self.bestfit[i]), float(self.uncertainty[i])


# --- reading ----------------------------------------------------------------------------------


def _fmt_edges(edges: np.ndarray) -> str:
    shown = [f"{e:g}" for e in edges]
    if len(shown) > 7:
        shown = [*shown[:3], "...", *shown[-2:]]
    return f"[{', '.join(shown)}] ({len(edges) - 1} bins)"


def _similar(key: str, keys) -> str:
    close = similar_names(key, set(keys))
    return f"; similar: {close}" if close else ""


def _from_arrays(where: str, edges, contents, variances=None) -> Histogram:
    """A :class:`Histogram` from edges and contents with or without flow bins."""
    try:
        edges = np.asarray(edges, dtype=np.float64)
        contents = np.asarray(contents, dtype=np.float64)
        variances = None if variances is None else np.asarray(variances, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: edges, contents and variances must be lists of numbers"
                        ) from None
    if edges.ndim != 1 or contents.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise DataError(f"{where}: edges must be a strictly increasing list of two or more "
                        "numbers")
    n = len(edges) - 1
    if len(contents) == n + 2:
        flow = slice(1, -1)
    elif len(contents) == n:
        flow = slice(None)
    else:
        raise DataError(f"{where}: {len(contents)} contents for {n} bins "
                        f"(expected {n} bins, or {n + 2} with under/overflow)")
    if variances is not None and variances.shape != contents.shape:
        raise DataError(f"{where}: variances have length {len(variances)}, "
                        f"contents {len(contents)}")
    if not np.all(np.isfinite(contents)):
        raise DataError(f"{where}: contents are not all finite")
    return Histogram(edges, contents[flow], None if variances is None else variances[flow])


def _read_json(path: Path, keys: list[str]) -> dict[str, Histogram]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: "
                        f"{err.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: neither a ROOT file nor JSON text") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a mapping of histogram names to "
                        "{edges, contents}, got " + type(content).__name__)
    out = {}
    for key in keys:
        if key not in content:
            raise DataError(f"{path}: histogram {key!r} not found{_similar(key, content)}")
        entry = content[key]
        if not isinstance(entry, dict) or not {"edges", "contents"} <= set(entry):
            raise DataError(f"{path}: {key}: expected {{edges: [...], contents: [...]}}, "
                            f"got {str(entry)[:60]}")
        out[key] = _from_arrays(f"{path}: {key}", entry["edges"], entry["contents"],
                                entry.get("variances"))
    return out


def _read_root(path: Path, keys: list[str]) -> dict[str, Histogram]:
    import uproot

    try:
        file = uproot.open(path)
    except Exception as err:  # uproot raises many types for a damaged file
        reason = " ".join(str(err).split())
        raise DataError(f"{path}: cannot read as a ROOT file "
                        f"({type(err).__name__}: {reason})") from None
    with file:
        names = file.keys(cycle=False)
        out = {}
        for key in keys:
            if key not in names:
                raise DataError(f"{path}: histogram {key!r} not found{_similar(key, names)}")
            obj = file[key]
            if not (hasattr(obj, "axes") and hasattr(obj, "values")) or len(obj.axes) != 1:
                raise DataError(f"{path}: {key}: expected a 1D histogram (TH1), got "
                                f"{getattr(obj, 'classname', type(obj).__name__)}")
            sumw2 = obj.member("fSumw2", none_if_missing=True) if hasattr(obj, "member") else None
            variances = obj.variances(flow=True) if sumw2 is not None and len(sumw2) else None
            out[key] = _from_arrays(f"{path}: {key}", obj.axis().edges(flow=False),
                                    obj.values(flow=True), variances)
    return out


def read_histograms(path: str | Path, keys: list[str]) -> dict[str, Histogram]:
    """Read the histograms ``keys`` from a JSON or ROOT file (told apart by their content).

    Raises:
        DataError: the file is missing or unreadable, a key is missing, or an entry is not a
            1D histogram.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: histogram file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_root(path, keys) if magic == b"root" else _read_json(path, keys)


def rebin(hist: Histogram, edges: list[float], where: str) -> Histogram:
    """Merge the bins of ``hist`` into ``edges`` (a subset of its edges); outside bins drop.

    Raises:
        DataError: an edge of ``edges`` is not an edge of ``hist``.
    """
    src = hist.edges
    scale = max(1.0, float(np.max(np.abs(src))))
    index = []
    for e in edges:
        hits = np.flatnonzero(np.abs(src - e) <= 1e-9 * scale)
        if hits.size == 0:
            raise DataError(f"{where}: binning edge {e:g} is not an edge of the input histogram "
                            f"{_fmt_edges(src)}; the region's edges must be a subset of them")
        index.append(int(hits[0]))
    pairs = list(zip(index, index[1:], strict=False))

    def merge(x):
        return None if x is None else np.array([x[a:b].sum() for a, b in pairs], dtype=np.float64)

    return Histogram(np.asarray(edges, dtype=np.float64), merge(hist.values), merge(hist.variances))


# --- normalisation ----------------------------------------------------------------------------


def agc_n_total(inputs: str | Path, files_per_process: int) -> dict[str, int]:
    """``N_total`` per process from the AGC file list (``nanoaod_inputs.json``).

    The AGC normalises a sample with ``σ·L/N_total``, ``N_total`` the summed ``nevts`` of the
    nominal files it processed: the first ``files_per_process`` of each process (all of them
    if there are fewer). ``histos_5_file_per_process.json`` was made with 5.

    Raises:
        DataError: the file is missing or not in the AGC layout.
    """
    path = Path(inputs)
    if files_per_process < 1:
        raise DataError(f"--files-per-process: must be >= 1, got {files_per_process}")
    try:
        content = json.loads(path.read_text())
        return {process: int(sum(f["nevts"] for f in variations["nominal"]["files"]
                                 [:files_per_process]))
                for process, variations in content.items() if "nominal" in variations}
    except FileNotFoundError:
        raise DataError(f"{path}: AGC input file list not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not an AGC input file list "
                        f"({{process: {{nominal: {{files: [{{nevts: ...}}]}}}}}}): "
                        f"{type(err).__name__}: {err}") from None


def event_weights(cfg: AnalysisConfig, n_total: dict[str, int] | None = None) -> dict[str, float]:
    """``w = σ·L/N_total`` for each nominal sample whose ``N_total`` and ``σ`` are known."""
    out = {}
    for name in cfg.nominal_samples:
        sample = cfg.samples[name]
        n = (n_total or {}).get(name, sample.n_total)
        if n is not None and sample.cross_section is not None:
            if n <= 0:
                raise DataError(f"N_total of sample {name!r} must be positive, got {n}")
            out[name] = sample.cross_section * cfg.luminosity / n
    return out


# --- the model --------------------------------------------------------------------------------


def _needed_keys(cfg: AnalysisConfig, data: str) -> dict[str, list[str]]:
    """Per region, the template names (``yields[region]`` keys) the model needs."""
    names = list(cfg.samples)  # nominal samples and histosys variation samples
    for syst in cfg.model.systematics:
        if syst.type == "normplusshape":
            variations = [syst.up] if syst.symmetrise else [syst.up, syst.down]
            for sample in syst.samples or cfg.nominal_samples:
                names += [spec.variation_key(sample, v) for v in variations]
    names = list(dict.fromkeys(names))
    return {region: [*names, data] for region in cfg.regions}


def build_workspace(
    cfg: AnalysisConfig,
    histograms: str | Path,
    *,
    data: str = "pseudodata",
    n_total: dict[str, int] | None = None,
) -> dict:
    """The pyhf workspace (plain JSON) of ``cfg``'s model with templates from ``histograms``.

    Args:
        cfg: The configuration (regions, their binning, samples, ``model``).
        histograms: A JSON or ROOT file of histograms ``<region>_<sample>[_<variation>]``.
        data: The sample name of the observations (``<region>_<data>``).
        n_total: ``N_total`` per sample for the variances ``w·Σw`` (see the module docs);
            overrides ``samples.<name>.n_total``.

    Raises:
        DataError: a histogram is missing or malformed, binning edges do not match, or a
            nominal template has no variances while ``model.staterror`` is on.
    """
    weights = event_weights(cfg, n_total)
    needed = _needed_keys(cfg, data)
    hists = read_histograms(histograms, [f"{r}_{k}" for r, keys in needed.items() for k in keys])
    yields: dict[str, dict] = {}
    observations = {}
    for region, keys in needed.items():
        edges = cfg.regions[region].binning.edges
        yields[region] = {}
        for key in keys:
            name = f"{region}_{key}"
            h = rebin(hists[name], edges, f"{histograms}: {name}: regions.{region}.binning")
            if key == data:
                observations[region] = h.values
                continue
            entry = {"nominal": h.values}
            if key in cfg.nominal_samples and cfg.model.staterror:
                if key in weights:
                    entry["sumw2"] = weights[key] * h.values
                elif h.variances is not None:
                    entry["sumw2"] = h.variances
                else:
                    raise DataError(
                        f"{histograms}: {name}: no variances in the file and no N_total for "
                        f"sample {key!r} to compute w·Σw: give samples.{key}.n_total, "
                        f"--n-total {key}=N, or --nanoaod-inputs FILE --files-per-process N")
            yields[region][key] = entry
    workspace = spec.to_json(spec.build(cfg, yields, observations))
    import pyhf

    try:
        pyhf.Workspace(workspace)
    except pyhf.exceptions.InvalidSpecification as err:
        raise DataError(f"{histograms}: the workspace built from it is invalid: "
                        f"{str(err).splitlines()[0]}") from None
    return workspace


def observed_data(workspace: dict, model: Model) -> np.ndarray:
    """Observations followed by auxiliary data, in pyhf order."""
    import pyhf

    return np.asarray(pyhf.Workspace(workspace).data(model.pyhf_model), dtype=np.float64)


#: Compiled fits by model structure: one compilation serves every workspace of that structure.
_COMPILED: dict[str, tuple[Model, object]] = {}


def _structure_key(workspace: dict, model: Model) -> str:
    """What a :class:`Model` fixes at construction: the spec without its numbers, the
    measurement, and the parameters pyhf fixes (staterror bins of zero width)."""

    def skeleton(obj):
        if isinstance(obj, dict):
            return {k: skeleton(v) for k, v in obj.items()}
        if isinstance(obj, list) and obj and all(isinstance(x, (int, float)) for x in obj):
            return len(obj)
        if isinstance(obj, list):
            return [skeleton(x) for x in obj]
        return None if isinstance(obj, float) else obj

    return json.dumps([skeleton(workspace["channels"]), workspace["measurements"],
                       model.suggested_fixed.tolist()], sort_keys=True)


def _compiled_fit(workspace: dict) -> tuple[Model, object]:
    """The model structure of ``workspace`` and a jitted ``(data, templates) -> (FitResult,
    Hessian of -2 ln L over the free parameters at the best fit)``."""
    model = Model(workspace)
    key = _structure_key(workspace, model)
    if key not in _COMPILED:
        free = np.flatnonzero(~model.suggested_fixed)

        @jax.jit
        def fit_and_hessian(data, templates):
            result = fit(model, data, templates)
            bestfit = jax.lax.stop_gradient(result.bestfit)

            def twice_nll(x):
                return -2.0 * model.logpdf(bestfit.at[free].set(x), data, templates)

            return result, jax.hessian(twice_nll)(bestfit[free])

        if len(_COMPILED) >= 4:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = (model, fit_and_hessian)
    return _COMPILED[key]


def _constraints(model: Model, poi: str) -> dict[str, tuple[float, float]]:
    """``(centre, width)`` of the scalar Gaussian-constrained parameters, staterror left out."""
    config = model.pyhf_model.config
    staterror = {name for name, kind in config.modifiers if kind == "staterror"}
    auxdata = np.asarray(config.auxdata, dtype=np.float64)
    out, start = {}, 0
    for name in config.auxdata_order:
        param_set = config.param_set(name)
        n = param_set.n_parameters
        if (name != poi and name not in staterror and n == 1
                and getattr(param_set, "pdf_type", None) == "normal"):
            out[name] = (float(auxdata[start]), float(param_set.width()[0]))
        start += n
    return out


def fit_workspace(workspace: dict) -> FitSummary:
    """Maximum-likelihood fit of a workspace to its observations, with Hessian uncertainties.

    The fit is :func:`diffana.infer.fit` (exact projected Newton); the uncertainties are
    ``sqrt(diag(2 H⁻¹))`` with ``H`` the autodiff Hessian of ``-2 ln L`` over the free
    parameters at the minimum (iminuit's HESSE, without its finite-difference noise). The
    compiled fit is kept per model structure, so further workspaces of the same structure
    (other histogram files of the same analysis) do not compile again.
    """
    model, fit_and_hessian = _compiled_fit(workspace)
    templates = model.templates(workspace)
    data = jnp.asarray(observed_data(workspace, model))
    result, hessian = fit_and_hessian(data, templates)
    free = np.flatnonzero(~model.suggested_fixed)
    try:
        variance = np.diag(2.0 * np.linalg.inv(np.asarray(hessian)))
    except np.linalg.LinAlgError:
        variance = np.full(free.size, np.nan)
    uncertainty = np.zeros(model.n_pars)
    uncertainty[free] = np.where(variance > 0, np.sqrt(np.abs(variance)), np.nan)
    poi = model.par_names[model.poi_index]
    return FitSummary(
        poi=poi,
        names=list(model.par_names),
        bestfit=np.asarray(result.bestfit, dtype=np.float64),
        uncertainty=uncertainty,
        twice_nll=float(result.twice_nll),
        converged=bool(result.converged),
        constraints=_constraints(model, poi),
    )


# --- outputs ----------------------------------------------------------------------------------


def pulls_plot(result: FitSummary, path: Path) -> None:
    """Pulls of the nuisance parameters (staterror left out), with ±1σ and ±2σ bands."""
    import matplotlib.pyplot as plt
    import mplhep

    from diffana.plot import _save

    pulls = []
    for name, (centre, width) in result.constraints.items():
        value, uncertainty = result.value(name)
        pulls.append((name, (value - centre) / width, uncertainty / width))
    with plt.style.context(mplhep.style.CMS):
        fig, ax = plt.subplots(figsize=(8, 1.5 + 0.45 * max(1, len(pulls))))
        y = np.arange(len(pulls))[::-1]
        ax.fill_betweenx([-0.5, len(pulls) - 0.5], -2, 2, color="yellow")
        ax.fill_betweenx([-0.5, len(pulls) - 0.5], -1, 1, color="limegreen")
        ax.axvline(0, color="black", ls="dotted", lw=1)
        if pulls:
            ax.errorbar([p[1] for p in pulls], y, xerr=[p[2] for p in pulls], fmt="o",
                        color="black")
        ax.set_yticks(y, [p[0] for p in pulls], fontsize=13)
        ax.set_ylim(-0.5, len(pulls) - 0.5)
        ax.set_xlim(-3, 3)
        ax.set_xlabel(r"$(\hat{\theta} - \theta_0)/\Delta\theta$")
        value, uncertainty = result.value(result.poi)
        ax.set_title(f"{result.poi} = {value:.4f} ± {uncertainty:.4f}", fontsize=14)
        _save(fig, path)


def summary(result: FitSummary) -> str:
    """One table: the POI ± its uncertainty first, then every nuisance parameter."""
    poi = result.names.index(result.poi)
    order = [poi, *[i for i in range(len(result.names)) if i != poi]]
    rows = [[result.names[i], f"{result.bestfit[i]:.4f}", f"{result.uncertainty[i]:.4f}"]
            for i in order]
    head = (f"fit: -2 ln L = {result.twice_nll:.5f}, "
            f"{'converged' if result.converged else 'NOT converged'}; "
            f"{result.poi} = {result.bestfit[poi]:.4f} ± {result.uncertainty[poi]:.4f}")
    return head + "\n" + report.table(rows, ["parameter", "best fit", "uncertainty"])


def fit_histograms(
    config_path: str | Path,
    histograms: str | Path,
    out: str | Path | None = None,
    *,
    data: str = "pseudodata",
    n_total: dict[str, int] | None = None,
    echo=print,
) -> dict:
    """Build the model from histograms, fit it and write ``workspace.json``, ``pulls.png`` and
    ``fit.json`` (last) into ``out`` (default ``runs/<name>-fit-<timestamp>``).

    Returns:
        The content of ``fit.json``.
    """
    cfg = configmod.load(config_path)
    workspace = build_workspace(cfg, histograms, data=data, n_total=n_total)
    result = fit_workspace(workspace)
    out_dir = Path(out) if out else Path("runs") / (
        f"{cfg.name}-fit-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DiffanaError(f"{out_dir}: cannot create the output directory ({err})") from None
    if (out_dir / "fit.json").exists():
        (out_dir / "fit.json").unlink()  # a rerun into the same directory starts over
    report.write_json(out_dir / "workspace.json", workspace)
    pulls_plot(result, out_dir / "pulls.png")
    fit_json = result.to_json()
    report.write_json(out_dir / "fit.json", fit_json)
    echo(summary(result))
    echo(f"wrote {out_dir}/fit.json, workspace.json, pulls.png")
    return fit_json
