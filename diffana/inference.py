"""``diffana infer``: the statistics a physicist quotes, for any pyhf workspace.

:func:`infer` reads a workspace (validated by pyhf's own schema), fits it and computes, with
the asymptotic formulae of :mod:`diffana.stats.hypotest`:

- the best fit with Hessian uncertainties and the correlation matrix,
- ``CLs`` at a POI value with its expected ±1σ/±2σ band (``qtilde``, as pyhf's ``hypotest``),
- the observed and expected upper limits (as pyhf's ``upper_limit``),
- the observed and expected discovery significance (``q0``),
- the impacts of the nuisance parameters on the POI (cabinetry's ranking),
- a likelihood scan of the POI,

and says in ``warnings`` what a number should not be trusted for (a fit that did not
converge, a parameter at a bound, zero expected background, a test outside the POI's bounds).
:func:`write_inference` writes ``inference.json`` and its figures. ``diffana run`` (for its
final hard-cut workspace, :mod:`diffana.outputs`) and ``diffana fit`` write the same, with the
arguments their configuration gives (:func:`settings`); :func:`digest` and :func:`headline`
are what they quote of it.

Example:
    >>> import pyhf
    >>> spec = pyhf.simplemodels.uncorrelated_background([5.0, 10.0], [50.0, 20.0], [5.0, 4.0])
    >>> workspace = {"channels": spec.spec["channels"],
    ...              "observations": [{"name": "singlechannel", "data": [52.0, 24.0]}],
    ...              "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
    ...              "version": "1.0.0"}
    >>> result = infer(workspace)
    >>> print(f"{result['cls']['observed']:.4f}")
    0.2153
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffana import files
from diffana.exceptions import DiffanaError
from diffana.stats import hypotest as ht
from diffana.stats import ranking
from diffana.stats.model import Model
from diffana.stats.modifiers import modifier_settings

__all__ = ["digest", "headline", "infer", "load_workspace", "parse_interpolation", "settings",
           "write_inference"]

#: The file :func:`write_inference` writes (beside it, its figures).
FILE = "inference.json"

#: Points of the likelihood scan, over the best fit ± this many standard deviations.
SCAN_POINTS, SCAN_SIGMAS = 31, 3.0
#: A parameter closer than this fraction of its range to a bound is reported as at the bound.
AT_BOUND = 1e-6


def load_workspace(path: str | Path) -> dict:
    """Read and validate a pyhf workspace (JSON) with pyhf's schema.

    Raises:
        DiffanaError: the file cannot be read, is not JSON, or is not a valid workspace (one
            line: the path into the document and what the schema expected).
    """
    path = Path(path)
    try:
        workspace = json.loads(path.read_text())
    except OSError as err:
        raise DiffanaError(f"{path}: {files.reason(err)}") from None
    except json.JSONDecodeError as err:
        raise DiffanaError(f"{path}: not JSON ({err})") from None
    validate(workspace, str(path))
    return workspace


def validate(workspace: dict, source: str = "workspace") -> None:
    """Check ``workspace`` against pyhf's ``workspace.json`` schema (one-line error)."""
    import pyhf

    try:
        pyhf.schema.validate(workspace, "workspace.json")
    except pyhf.exceptions.InvalidSpecification as err:
        where = "/".join(str(p) for p in getattr(err, "path", []) or [])
        message = " ".join(str(getattr(err, "message", err)).split())
        raise DiffanaError(f"{source}: not a valid pyhf workspace"
                           f"{f' at {where}' if where else ''}: {message}") from None


def parse_interpolation(items: list[str]) -> dict[str, str]:
    """``["normsys:code1", ...]`` as ``{"normsys": "code1"}`` (checked against the codes)."""
    codes = {}
    for item in items:
        m_type, sep, code = item.partition(":")
        if not sep or not m_type or not code:
            raise DiffanaError(f"--interpolation: expected TYPE:CODE (normsys:code1), got {item!r}")
        codes[m_type] = code
    try:
        modifier_settings(codes)
    except ValueError as err:
        raise DiffanaError(str(err)) from None
    return codes


def _model(workspace: dict, measurement: str | None, codes: dict[str, str] | None) -> Model:
    names = [m["name"] for m in workspace["measurements"]]
    if measurement is not None and measurement not in names:
        raise DiffanaError(f"--measurement: no measurement {measurement!r} in the workspace "
                           f"(measurements: {', '.join(names)})")
    try:
        model = Model(workspace, modifier_settings=modifier_settings(codes),
                      measurement=measurement)
    except ValueError as err:
        raise DiffanaError(" ".join(str(err).split())) from None
    if model.poi_index is None:
        raise DiffanaError("the measurement has no parameter of interest (config.poi)")
    return model


def _errors(fits: ht.Fits, free: ht.FitBatch) -> tuple[np.ndarray, np.ndarray]:
    """Post-fit uncertainties (all parameters; 0 for fixed) and the correlation matrix of the
    free parameters, from ``2 H⁻¹`` of the free block."""
    index = fits.free
    hessian = free.hessian[0][np.ix_(index, index)]
    try:
        covariance = 2.0 * np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        covariance = np.full_like(hessian, np.nan)
    variance = np.diag(covariance)
    errors = np.zeros(fits.model.n_pars)
    errors[index] = np.where(variance > 0, np.sqrt(np.abs(variance)), np.nan)
    scale = np.sqrt(np.abs(variance))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = covariance / np.outer(scale, scale)
    return errors, correlation


def _number(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _numbers(xs) -> list:
    return [_number(x) for x in np.asarray(xs, dtype=np.float64)]


def _at_bounds(fits: ht.Fits, bestfit: np.ndarray) -> list[str]:
    names = fits.model.par_names
    out = []
    for i in fits.free:
        lo, hi = fits.lower[i], fits.upper[i]
        tolerance = AT_BOUND * max(hi - lo, 1.0)
        for bound, side in ((lo, "lower"), (hi, "upper")):
            if abs(bestfit[i] - bound) <= tolerance:
                out.append(f"{names[i]} is at its {side} bound {bound:g} in the best fit: its "
                           f"uncertainty and the impacts on it are not reliable")
    return out


def _ranking(fits: ht.Fits, data, free: ht.FitBatch, errors: np.ndarray, warnings: list) -> list:
    model = fits.model
    shifts, converged = ranking.impacts(fits, data, free, errors)
    if not converged:
        warnings.append("ranking: some impact fits did not converge")
    prefit = ht.prefit_uncertainties(model)
    bestfit = free.bestfit[0]
    rows = []
    for i in fits.free:
        if i == model.poi_index:
            continue
        if prefit[i] > 0:  # pull in units of the constraint: (θ̂ - θ0) / Δθ, σ̂ / Δθ
            pull = [(bestfit[i] - fits.init[i]) / prefit[i], errors[i] / prefit[i]]
        else:
            pull = [bestfit[i], errors[i]]
        rows.append({"parameter": model.par_names[i], "pull": _numbers(pull),
                     "prefit": _numbers([shifts[i, 1], shifts[i, 0]]),
                     "postfit": _numbers([shifts[i, 3], shifts[i, 2]])})
    # cabinetry's order: decreasing larger post-fit impact
    rows.sort(key=lambda r: -max(abs(r["postfit"][0] or 0.0), abs(r["postfit"][1] or 0.0)))
    return rows


def infer(workspace: dict, *, measurement: str | None = None, poi_value: float | None = None,
          level: float = 0.05, interpolation: dict[str, str] | None = None,
          details: dict | None = None) -> dict:
    """Everything of ``inference.json`` for a validated pyhf workspace.

    Args:
        workspace: A pyhf workspace (already validated, see :func:`load_workspace`).
        measurement: The measurement's name (default: the first).
        poi_value: The POI value of the ``CLs`` test; ``None``: 1 (a warning and no ``CLs``
            when 1 lies outside the POI's bounds; an explicit value outside them is an
            error).
        level: ``CLs`` level of the upper limits (0.05: 95 % CL).
        interpolation: Interpolation code per modifier type (``{"normsys": "code1"}``).
        details: If given, filled with what the figures need beyond the JSON (the ``CLs``
            scan for the Brazil band, the POI's name and bounds).

    Returns:
        The ``inference.json`` content: ``poi``, ``twice_nll``, ``bestfit``, ``correlation``,
        ``cls``, ``upper_limit``, ``significance``, ``ranking``, ``scan``, ``warnings``.

    Raises:
        DiffanaError: an unknown measurement or interpolation code, an unsupported modifier
            type, no POI, a ``poi_value`` outside the POI's bounds or ``level`` not in (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise DiffanaError(f"--level: must be in (0, 1), got {level}")
    model = _model(workspace, measurement, interpolation)
    poi, poi_name = model.poi_index, model.par_names[model.poi_index]
    lo, hi = (float(b) for b in model.suggested_bounds[poi])
    warnings: list[str] = []
    if poi_value is not None and not lo <= poi_value <= hi:
        raise DiffanaError(f"--poi-value: {poi_value:g} is outside the bounds [{lo:g}, {hi:g}] "
                           f"of the POI {poi_name}")
    tested = 1.0 if poi_value is None else float(poi_value)
    data, fits = _observed_and_fits(workspace, model)

    free = fits.run(data, fits.init, fits.lower, fits.upper)
    if not free.converged[0]:
        warnings.append("the best fit did not converge: every number below is suspect")
    warnings += _at_bounds(fits, free.bestfit[0])
    errors, correlation = _errors(fits, free)
    result: dict = {
        "poi": poi_name,
        "twice_nll": _number(free.twice_nll[0]),
        "bestfit": {n: {"value": _number(v), "error": _number(e)}
                    for n, v, e in zip(model.par_names, free.bestfit[0], errors, strict=True)},
        "correlation": {"parameters": [model.par_names[i] for i in fits.free],
                        "matrix": [_numbers(row) for row in correlation]},
        "cls": {"poi_value": tested, "observed": None, "expected": None},
        "upper_limit": {"level": level, "observed": None, "expected": None},
        "significance": {"observed": None, "expected": None},
    }
    background_possible = lo <= 0.0 <= hi
    if not background_possible:
        warnings.append(f"0 is outside the bounds [{lo:g}, {hi:g}] of the POI {poi_name}: no "
                        "background-only hypothesis, so no CLs, upper limit or significance")
    elif lo != 0.0:
        warnings.append(f"qtilde assumes the POI's lower bound is 0, {poi_name} has {lo:g}")
    if background_possible:
        ref = ht.reference(fits, data, free)
        if not ref.background.converged[0]:
            warnings.append(f"the fit with {poi_name} = 0 did not converge")
        if lo <= tested <= hi:
            test = ht.hypotest(fits, data, tested, ref)
            result["cls"].update(observed=_number(test.cls_observed),
                                 expected=_numbers(test.cls_expected))
        else:
            warnings.append(f"no CLs: the default POI value 1 is outside the bounds "
                            f"[{lo:g}, {hi:g}] of {poi_name} (give --poi-value)")
        observed, expected, converged = ht.upper_limits(fits, data, level, ref)
        if not converged:
            warnings.append("the upper-limit search did not converge")
        if max(observed, *expected) > hi:
            warnings.append(f"an upper limit lies above the POI's upper bound {hi:g}")
        result["upper_limit"].update(observed=_number(observed), expected=_numbers(expected))
        _significance(fits, data, ref, result, warnings)
        if details is not None:
            grid = _cls_grid(observed, expected, hi)
            details["cls_scan"] = (grid, *ht.cls_scan(fits, data, grid, ref))
    result["ranking"] = _ranking(fits, data, free, errors, warnings)
    result["scan"] = _scan(fits, data, free, errors[poi], lo, hi, warnings)
    result["warnings"] = warnings
    if details is not None:
        details.update(poi=poi_name, bounds=(lo, hi))
    return result


def prepare(workspace: dict, *, measurement: str | None = None,
            interpolation: dict[str, str] | None = None, **_) -> None:
    """Compile the best fit of :func:`infer` for workspaces shaped like ``workspace`` (the
    same channels, samples, modifiers and bins; other numbers): one fit, whose compiled form
    a later :func:`infer` takes from the compilation cache. Takes :func:`settings`' keywords."""
    data, fits = _observed_and_fits(workspace, _model(workspace, measurement, interpolation))
    fits.run(data, fits.init, fits.lower, fits.upper)


def _observed_and_fits(workspace: dict, model: Model) -> tuple[np.ndarray, ht.Fits]:
    """The workspace's observed (main and auxiliary) data, and the compiled fits of
    ``model``."""
    import pyhf

    # validated: by the caller, and by the model built from it
    data = np.asarray(pyhf.Workspace(workspace, validate=False).data(model.pyhf_model),
                      dtype=np.float64)
    return data, ht.Fits(model, model.templates())


def _cls_grid(observed: float, expected: np.ndarray, hi: float) -> np.ndarray:
    """POI values for the Brazil-band figure: linear from 0, or logarithmic when the limits
    lie orders of magnitude apart."""
    limits = np.array([observed, *expected])
    limits = limits[np.isfinite(limits) & (limits > 0)]
    if limits.size == 0:
        return np.linspace(0.0, hi, 41)[1:]
    low, top = limits.min() / 2.0, 1.3 * limits.max()
    if top / low > 100:
        return np.geomspace(low, top, 50)
    return np.linspace(0.0, top, 41)[1:]


def _significance(fits: ht.Fits, data, ref, result: dict, warnings: list) -> None:
    z_obs, z_exp, rates_b, rates_sb = ht.significance(fits, data, ref)
    n_bins = fits.model.n_bins
    empty = (rates_b <= 0.0) & ((rates_sb > 0.0) | (data[:n_bins] > 0.0))
    if empty.any():
        warnings.append(f"{int(empty.sum())} bin(s) have zero expected background with "
                        "signal or data in them: q0 is infinite, no significance")
        return
    result["significance"].update(observed=_number(z_obs), expected=_number(z_exp))


def _scan(fits: ht.Fits, data, free: ht.FitBatch, error: float, lo: float, hi: float,
          warnings: list) -> dict:
    poi = fits.model.poi_index
    mu_hat = free.bestfit[0, poi]
    width = SCAN_SIGMAS * (error if np.isfinite(error) and error > 0 else 1.0)
    values = np.linspace(max(lo, mu_hat - width), min(hi, mu_hat + width), SCAN_POINTS)
    fixed = fits.profile(data, values, free.bestfit[0])
    if not fixed.converged.all():
        warnings.append("scan: some fits did not converge")
    return {"poi_values": _numbers(values),
            "delta_twice_nll": _numbers(fixed.twice_nll - free.twice_nll[0])}


def write_inference(workspace: dict, out_dir: str | Path, *, measurement: str | None = None,
                    poi_value: float | None = None, level: float = 0.05,
                    interpolation: dict[str, str] | None = None, plots: bool = True,
                    echo: Callable[[str], None] | None = print) -> dict:
    """Compute :func:`infer` and write ``out_dir/inference.json`` with its figures.

    The figures (PNG and PDF): ``cls_scan`` (observed ``CLs`` with the Brazil band),
    ``ranking`` (impacts and pulls), ``likelihood_scan`` and ``correlation``.

    Args:
        workspace: A pyhf workspace (validated here).
        out_dir: Directory to write into (created).
        measurement, poi_value, level, interpolation: As :func:`infer`.
        plots: Also write the figures.
        echo: Where the summary and the warnings go (``None``: nowhere).

    Returns:
        The content of ``inference.json``.
    """
    validate(workspace)
    details: dict = {}
    result = infer(workspace, measurement=measurement, poi_value=poi_value, level=level,
                   interpolation=interpolation, details=details)
    write_json(result, out_dir)
    if plots:
        figures(result, details, out_dir)
    if echo is not None:
        echo(summary(result))
        echo(f"wrote {Path(out_dir) / FILE}" + (" and its figures" if plots else ""))
    return result


def write_json(result: dict, out_dir: str | Path) -> None:
    """Write ``out_dir/inference.json`` (``out_dir`` created)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise files.cannot("create", out_dir, err) from None
    files.write_atomic(out_dir / FILE, json.dumps(result, indent=2) + "\n")


def figures(result: dict, details: dict, out_dir: str | Path) -> None:
    """The figures of :func:`infer`'s ``result`` and ``details`` into ``out_dir``."""
    from diffana import plot_inference

    plot_inference.all_figures(result, details, Path(out_dir))


def settings(cfg) -> dict:
    """The keyword arguments of :func:`infer` that a configuration gives (``inference:``
    and ``model.interpolation``)."""
    return {"level": cfg.inference.level, "poi_value": cfg.inference.poi_value,
            "interpolation": cfg.model.interpolation.codes()}


def digest(result: dict) -> dict:
    """The numbers of ``result`` a run quotes (``results.json``'s ``inference``): the file,
    the POI's best fit, the upper limits and the significance."""
    poi = result["poi"]
    best = result["bestfit"][poi]
    return {"file": FILE, "poi": poi, "bestfit": [best["value"], best["error"]],
            "upper_limit": result["upper_limit"], "significance": result["significance"]}


def headline(quoted: dict) -> list[str]:
    """Two lines of a :func:`digest`: the upper limits, the best fit and the significance.

    Example:
        >>> print("\\n".join(headline({"file": "inference.json", "poi": "mu",
        ...     "bestfit": [1.0, 0.1], "significance": {"observed": 3.0, "expected": 2.5},
        ...     "upper_limit": {"level": 0.05, "observed": 1.2,
        ...                     "expected": [0.5, 0.7, 1.0, 1.4, 1.9]}})))
        upper limit on mu (95% CL): observed 1.2, expected 1 (±1σ: 0.7 to 1.4); mu = 1 ± 0.1
        significance: observed 3.000σ, expected 2.500σ (inference.json)
    """

    def fmt(x, spec=".4g"):
        return "n/a" if x is None else format(x, spec)

    poi, limit, z = quoted["poi"], quoted["upper_limit"], quoted["significance"]
    expected = limit["expected"] or [None] * 5
    return [f"upper limit on {poi} ({100 * (1 - limit['level']):g}% CL): observed "
            f"{fmt(limit['observed'])}, expected {fmt(expected[2])} (±1σ: {fmt(expected[1])} "
            f"to {fmt(expected[3])}); {poi} = {fmt(quoted['bestfit'][0])} ± "
            f"{fmt(quoted['bestfit'][1])}",
            f"significance: observed {fmt(z['observed'], '.3f')}σ, expected "
            f"{fmt(z['expected'], '.3f')}σ ({quoted['file']})"]


def summary(result: dict) -> str:
    """A few lines for the terminal: the best fit, CLs, limits, significance, warnings."""
    poi = result["poi"]
    best = result["bestfit"][poi]

    def fmt(x, spec=".4g"):
        return "n/a" if x is None else format(x, spec)

    lines = [f"{poi} = {fmt(best['value'])} ± {fmt(best['error'])}  "
             f"(-2 ln L = {fmt(result['twice_nll'], '.6g')})"]
    cls = result["cls"]
    if cls["observed"] is not None:
        lines.append(f"CLs({poi} = {cls['poi_value']:g}): observed {fmt(cls['observed'])}, "
                     f"expected {fmt(cls['expected'][2])} "
                     f"[{', '.join(fmt(x) for x in cls['expected'])}]")
    limit = result["upper_limit"]
    if limit["observed"] is not None:
        lines.append(f"upper limit ({100 * (1 - limit['level']):g}% CL): observed "
                     f"{fmt(limit['observed'])}, expected {fmt(limit['expected'][2])} "
                     f"[{', '.join(fmt(x) for x in limit['expected'])}]")
    z = result["significance"]
    lines.append(f"significance: observed {fmt(z['observed'], '.3f')}, expected "
                 f"{fmt(z['expected'], '.3f')}")
    for row in result["ranking"][:5]:
        lines.append(f"  impact of {row['parameter']}: post-fit {fmt(row['postfit'][0])} "
                     f"(down), {fmt(row['postfit'][1])} (up)")
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)
