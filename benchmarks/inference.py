"""``diffana infer``'s statistics against pyhf on the AGC workspace, in one process.

Times, after compilation (diffana: one compiled box fit; pyhf's JAX backend: its own jit),
the medians of at least ``--repeat`` calls (more, up to half a second, for quick items) of:

- ``fit``: the free maximum-likelihood fit (pyhf ``infer.mle.fit``),
- ``cls_band``: ``CLs`` at ``POI = 1`` with the expected band (pyhf ``infer.hypotest(...,
  return_expected_set=True)``; diffana: free fit, background-only fit, two fits at ``POI = 1``),
- ``upper_limit``: observed and five expected limits (pyhf ``upper_limit(scan=None)``'s
  ``toms748_scan``, bracket ``--limit-bounds``; diffana: the Newton iteration of
  ``stats.hypotest.upper_limits``, which needs no bracket),
- ``ranking``: the impacts of every nuisance parameter, 4 fits each (cabinetry's loop on
  pyhf; pyhf's time is measured on ``--ranking-subset`` parameters and scaled to all),
- ``scan``: ``--scan-points`` fits with the POI held (both started at the best fit),

and diffana's compilation: ``compile_s``, the first call of everything ``diffana infer``
computes (the items above, the significance and the ``CLs`` scan of the Brazil band) on a
fresh model, and ``infer_s``, a whole :func:`diffana.inference.infer` on a model of its own
(what ``diffana infer`` and a run's inference take: compilation, model and every fit); each
also as the process's CPU seconds (``compile_cpu_s``, ``infer_cpu_s``: steadier than the wall
clock on a shared machine). ``fit_interleaved``: the free fit of diffana and of pyhf's JAX
backend called in turns (``--interleaved-pairs`` each; the medians, the median of the
pairwise ratios and their 10th percentile), the fairest comparison for the shortest item.
``numbers.newton`` counts each item's fits, their Newton
iterations and the fits that did not converge (the same on every machine). pyhf uses scipy's
SLSQP (its default optimiser). Prints JSON with ``ratio`` = pyhf's faster backend / diffana
per item:

    python benchmarks/inference.py --json benchmarks/results/inference_cpu.json
    python benchmarks/inference.py --backends jax --repeat 3       # skip pyhf's NumPy backend
    python benchmarks/inference.py --backends --repeat 1          # diffana only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "tests" / "data" / "agc_workspace.json"


def _median_time(function, repeat: int, budget: float = 0.5) -> float:
    """The median time of at least ``repeat`` calls, and of more while they took less than
    ``budget`` seconds together (up to 1000): an item of a few milliseconds is timed over
    hundreds of calls, not three, on a machine whose load comes and goes."""
    times: list[float] = []
    while len(times) < repeat or (sum(times) < budget and len(times) < 1000):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def diffana_times(workspace: dict, repeat: int, scan_points: int) -> tuple[dict, dict]:
    """diffana's times per item and the numbers they produced."""
    import jax

    from diffana.inference import infer
    from diffana.stats import Model
    from diffana.stats import hypotest as ht
    from diffana.stats import ranking as rk

    start, cpu = time.perf_counter(), time.process_time()
    model = Model(workspace)
    fits = ht.Fits(model, model.templates())
    import pyhf

    data = np.asarray(pyhf.Workspace(workspace).data(model.pyhf_model), dtype=np.float64)
    poi = model.poi_index

    def fit():
        return fits.run(data, fits.init, fits.lower, fits.upper)

    def errors(free):
        index = fits.free
        variance = np.diag(2.0 * np.linalg.inv(free.hessian[0][np.ix_(index, index)]))
        out = np.zeros(model.n_pars)
        out[index] = np.sqrt(np.abs(variance))
        return out

    def cls_band():
        return ht.hypotest(fits, data, 1.0, ht.reference(fits, data, fit()))

    def upper_limit():
        return ht.upper_limits(fits, data, 0.05, ht.reference(fits, data, fit()))

    def ranking():
        free = fit()
        return rk.impacts(fits, data, free, errors(free))

    def significance():
        return ht.significance(fits, data, ht.reference(fits, data, fit()))

    def cls_scan():
        return ht.cls_scan(fits, data, np.linspace(0.0, 2.0, 41)[1:],
                           ht.reference(fits, data, fit()))

    free = fit()
    grid = np.linspace(free.bestfit[0, poi] - 2 * errors(free)[poi],
                       free.bestfit[0, poi] + 2 * errors(free)[poi], scan_points)

    def scan():
        return fits.profile(data, grid, free.bestfit[0])

    items = {"fit": fit, "cls_band": cls_band, "upper_limit": upper_limit,
             "ranking": ranking, "scan": scan}
    counted: dict = {}
    run = fits.run

    def counting_run(*args):  # each item's fits and their Newton iterations (not timed)
        batch = run(*args)
        counted["fits"] += len(batch.n_iter)
        counted["iterations"] += int(batch.n_iter.sum())
        counted["not_converged"] += int(np.count_nonzero(~batch.converged))
        return batch

    fits.run = counting_run
    results, newton = {}, {}
    for name, function in items.items():  # compiles
        counted.update(fits=0, iterations=0, not_converged=0)
        results[name] = function()
        newton[name] = dict(counted)
    fits.run = run
    significance()
    cls_scan()
    jax.block_until_ready(jax.numpy.zeros(1))
    compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    times = {name: _median_time(function, repeat) for name, function in items.items()}
    times.update(compile_s=compile_s, compile_cpu_s=compile_cpu_s)
    start, cpu = time.perf_counter(), time.process_time()
    infer(workspace, details={})
    times.update(infer_s=time.perf_counter() - start, infer_cpu_s=time.process_time() - cpu)
    numbers = {"poi_hat": float(results["fit"].bestfit[0, poi]),
               "cls_observed": results["cls_band"].cls_observed,
               "cls_expected": results["cls_band"].cls_expected.tolist(),
               "limit_observed": results["upper_limit"][0],
               "limit_expected": results["upper_limit"][1].tolist(),
               "n_ranking_fits": int(np.count_nonzero(results["ranking"][0])),
               "scan_points": scan_points,
               "newton": newton}
    return times, numbers


def pyhf_times(workspace: dict, backend: str, repeat: int, scan_points: int,
               ranking_subset: int, limit_bounds: tuple[float, float],
               only: list[str] | None = None) -> tuple[dict, dict]:
    """pyhf's times per item (scipy optimiser) and its numbers."""
    import pyhf

    pyhf.set_backend(backend, "scipy")
    ws = pyhf.Workspace(workspace)
    model = ws.model()
    data = ws.data(model)
    tensor = pyhf.tensorlib
    poi = model.config.poi_index
    fixed = model.config.suggested_fixed()
    init = model.config.suggested_init()

    def fit():
        return pyhf.infer.mle.fit(data, model)

    def cls_band():
        return pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde",
                                   return_expected_set=True)

    from pyhf.infer.intervals import upper_limits

    def hypotest_floats(*args, **kwargs):  # pyhf 0.7.6's toms748_scan caches by POI value,
        # which its JAX backend makes an unhashable array: the same numbers as floats
        observed, band = pyhf.infer.hypotest(*args, **kwargs)
        return float(observed), [float(x) for x in band]

    upper_limits.hypotest = hypotest_floats

    def upper_limit():  # upper_limit(scan=None) is toms748_scan over the POI's bounds
        return upper_limits.toms748_scan(data, model, *limit_bounds)

    bestfit = np.asarray(tensor.tolist(fit()))
    prefit = np.asarray(
        [w for name in model.config.par_order for w in (
            model.config.param_set(name).width() if model.config.param_set(name).constrained
            else [0.0] * model.config.param_set(name).n_parameters)])
    nuisances = [i for i in range(model.config.npars) if i != poi and not fixed[i]]
    subset = nuisances[:ranking_subset]

    def ranking():  # cabinetry.fit.ranking's loop; half the pre-fit widths stand in for post-fit
        fit()
        for i in subset:
            for value in (bestfit[i] + prefit[i], bestfit[i] - prefit[i],
                          bestfit[i] + 0.5 * prefit[i], bestfit[i] - 0.5 * prefit[i]):
                pars = list(init)
                pars[i] = float(value)
                held = list(fixed)
                held[i] = True
                pyhf.infer.mle.fit(data, model, init_pars=pars, fixed_params=held)

    grid = np.linspace(bestfit[poi] - 0.2, bestfit[poi] + 0.2, scan_points)

    def scan():
        for value in grid:
            pyhf.infer.mle.fixed_poi_fit(float(value), data, model, init_pars=bestfit.tolist())

    items = {"fit": fit, "cls_band": cls_band, "upper_limit": upper_limit,
             "ranking": ranking, "scan": scan}
    items = {k: v for k, v in items.items() if only is None or k in only}
    numbers = {}
    times = {}
    for name, function in items.items():
        out = function()  # the JAX backend compiles here
        if name == "cls_band":
            numbers["cls_observed"] = float(out[0])
            numbers["cls_expected"] = [float(x) for x in out[1]]
        if name == "upper_limit":
            numbers["limit_observed"] = float(out[0])
            numbers["limit_expected"] = [float(x) for x in out[1]]
        times[name] = _median_time(function, repeat)
    if "ranking" in times:
        times["ranking"] *= len(nuisances) / max(len(subset), 1)  # scaled to every parameter
    numbers["ranking_measured_parameters"] = len(subset)
    numbers["ranking_parameters"] = len(nuisances)
    pyhf.set_backend("numpy")
    return times, numbers


def interleaved_fit(workspace: dict, pairs: int) -> dict:
    """The free fit, diffana's and pyhf's JAX backend's, called in turns ``pairs`` times:
    both timed under the same load (the items above are timed minutes apart, and a fit of
    a few milliseconds moves with whatever else the machine runs)."""
    import pyhf

    from diffana.stats import Model
    from diffana.stats import hypotest as ht

    model = Model(workspace)
    fits = ht.Fits(model, model.templates())
    pyhf.set_backend("jax", "scipy")
    ws = pyhf.Workspace(workspace)
    theirs_model = ws.model()
    data = ws.data(theirs_model)
    ours_data = np.asarray(data, dtype=np.float64)

    def ours():
        return fits.run(ours_data, fits.init, fits.lower, fits.upper)

    def theirs():
        return pyhf.infer.mle.fit(data, theirs_model)

    ours(), theirs()  # compiled
    times = np.zeros((pairs, 2))
    for row in times:
        for column, function in enumerate((ours, theirs)):
            start = time.perf_counter()
            function()
            row[column] = time.perf_counter() - start
    ratios = times[:, 1] / times[:, 0]
    return {"pairs": pairs, "diffana_s": float(np.median(times[:, 0])),
            "pyhf_jax_s": float(np.median(times[:, 1])),
            "ratio_median": float(np.median(ratios)),
            "ratio_10th_percentile": float(np.percentile(ratios, 10))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=WORKSPACE)
    ap.add_argument("--backends", nargs="*", default=["numpy", "jax"],
                    help="pyhf's backends to time (none: diffana only)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pyhf-repeat", type=int, default=1)
    ap.add_argument("--scan-points", type=int, default=11)
    ap.add_argument("--ranking-subset", type=int, default=4)
    ap.add_argument("--numpy-items", nargs="+", default=["fit", "cls_band", "scan"],
                    help="items timed with pyhf's NumPy backend (its upper limit and ranking "
                         "take many minutes on the AGC)")
    ap.add_argument("--limit-bounds", type=float, nargs=2, default=[0.0, 2.0],
                    help="pyhf's initial toms748 bracket (the AGC POI's bounds [0, 10] make "
                         "pyhf's fits at 10 return NaN)")
    ap.add_argument("--interleaved-pairs", type=int, default=100,
                    help="calls of each fit for fit_interleaved (0: skip; needs jax)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)

    import jax

    workspace = json.loads(args.workspace.read_text())
    ours, our_numbers = diffana_times(workspace, args.repeat, args.scan_points)
    out = {"workspace": str(args.workspace.relative_to(ROOT)
                            if args.workspace.is_relative_to(ROOT) else args.workspace),
           "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
           "diffana": {"seconds": ours, "numbers": our_numbers}, "pyhf": {}}
    for backend in args.backends:
        times, numbers = pyhf_times(workspace, backend, args.pyhf_repeat, args.scan_points,
                                    args.ranking_subset, tuple(args.limit_bounds),
                                    args.numpy_items if backend == "numpy" else None)
        out["pyhf"][backend] = {"seconds": times, "numbers": numbers}
    items = ["fit", "cls_band", "upper_limit", "ranking", "scan"]
    out["ratio_vs_faster_pyhf"] = {
        item: min(out["pyhf"][b]["seconds"][item] for b in args.backends
                  if item in out["pyhf"][b]["seconds"]) / ours[item]
        for item in items} if args.backends else {}
    if "jax" in args.backends and args.interleaved_pairs:
        out["fit_interleaved"] = interleaved_fit(workspace, args.interleaved_pairs)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
