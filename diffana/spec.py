"""The pyhf HistFactory specification built from the configuration and the histograms.

One channel per region, one pyhf sample per nominal sample. Modifiers:

- the POI (``model.poi``) as a ``normfactor`` on every signal sample,
- ``staterror`` per region (absolute uncertainty ``sqrt(Σw²)`` per bin) when
  ``model.staterror`` is on,
- ``normsys`` with the configured ``up``/``down`` factors,
- ``histosys`` whose up/down templates are the histograms of variation samples
  (a missing ``down`` is symmetrised as ``2·nominal − up``),
- ``lumi`` with auxiliary measurement ``1 ± up``,
- ``normplusshape`` as cabinetry's NormPlusShape: a ``normsys`` and a ``histosys`` of the
  same name (see :func:`norm_plus_shape`); the variation templates are
  ``yields[region][f"{sample}_{variation}"]``.

The leaves of the spec may be JAX arrays (traced: the histograms depend on the cuts) or
NumPy arrays; :func:`to_json` turns it into plain JSON for ``pyhf.Workspace``.
"""

from __future__ import annotations

import jax
import numpy as np

from diffana.config import AnalysisConfig, Systematic
from diffana.exceptions import DataError
from diffana.infer import safe_sqrt


def staterror_name(region: str) -> str:
    return f"staterror_{region}"


def build(cfg: AnalysisConfig, yields: dict, observations: dict | None = None) -> dict:
    """A pyhf workspace spec for ``yields[region][sample] = {"nominal", "sumw2"}``.

    ``observations`` defaults to the Asimov data at POI = 1 with nominal nuisances (the sum
    of the nominal yields of all samples).
    """
    m = cfg.model
    channels, obs = [], []
    for region in cfg.regions:
        samples = []
        for name in cfg.nominal_samples:
            y = yields[region][name]
            mods: list[dict] = []
            if name in m.signal:
                mods.append({"name": m.poi, "type": "normfactor", "data": None})
            if m.staterror:
                mods.append({"name": staterror_name(region), "type": "staterror",
                             "data": safe_sqrt(y["sumw2"])})
            for syst in m.systematics:
                if syst.type == "normsys" and name in syst.samples:
                    mods.append({"name": syst.name, "type": "normsys",
                                 "data": {"hi": syst.up, "lo": syst.down}})
                elif syst.type == "lumi" and name in syst.samples:
                    mods.append({"name": syst.name, "type": "lumi", "data": None})
                elif syst.type == "histosys" and name in syst.variations:
                    var = syst.variations[name]
                    hi = yields[region][var["up"]]["nominal"]
                    lo = (yields[region][var["down"]]["nominal"] if "down" in var
                          else 2.0 * y["nominal"] - hi)
                    mods.append({"name": syst.name, "type": "histosys",
                                 "data": {"hi_data": hi, "lo_data": lo}})
                elif syst.type == "normplusshape" and name in (syst.samples or cfg.nominal_samples):
                    mods.extend(_normplusshape_modifiers(syst, region, name, yields[region]))
            samples.append({"name": name, "data": y["nominal"], "modifiers": mods})
        channels.append({"name": region, "samples": samples})
        data = (observations or {}).get(region)
        if data is None:
            data = sum(yields[region][s]["nominal"] for s in cfg.nominal_samples)
        obs.append({"name": region, "data": data})

    parameters = [{"name": m.poi, "bounds": [list(m.poi_bounds)], "inits": [1.0]}]
    for syst in m.systematics:
        if syst.type == "lumi":
            parameters.append({"name": syst.name, "auxdata": [1.0], "sigmas": [syst.up],
                               "bounds": [[max(1e-3, 1.0 - 5 * syst.up), 1.0 + 5 * syst.up]],
                               "inits": [1.0]})
    return {
        "channels": channels,
        "observations": obs,
        "measurements": [{"name": "measurement",
                          "config": {"poi": m.poi, "parameters": parameters}}],
        "version": "1.0.0",
    }


def variation_key(sample: str, variation: str) -> str:
    """The key of a variation template of ``sample`` in ``yields[region]``."""
    return f"{sample}_{variation}"


NORM_FLOOR = 0.01


def norm_plus_shape(nominal, up, down=None):
    """Split a variation into a normalisation and a shape effect, as cabinetry does.

    The normalisation effect is the yield ratio ``Σup / Σnominal``; the shape template is the
    variation scaled to the nominal yield. Without ``down`` the variation is symmetrised the
    way cabinetry's ``Symmetrize`` does it (normalise first, then mirror): ``lo = 2 − hi`` for
    the normalisation and ``2·nominal − up_shape`` for the shape. Works on NumPy and (traced)
    JAX arrays (NumPy in, NumPy float64 out). A sample with no nominal yield gets no effect
    (factors 1, nominal shapes). Normalisation factors are floored at ``NORM_FLOOR``.

    Returns:
        ``(norm_hi, norm_lo, hi_data, lo_data)``.

    Example:
        >>> import numpy as np
        >>> nominal, up = np.array([10.0, 10.0]), np.array([12.0, 10.0])
        >>> hi, lo, hi_data, lo_data = norm_plus_shape(nominal, up)
        >>> print(f"{hi:.2f} {lo:.2f}", np.round(hi_data, 3), np.round(lo_data, 3))
        1.10 0.90 [10.909  9.091] [ 9.091 10.909]
    """
    import jax.numpy as jnp

    arrays = (nominal, up) if down is None else (nominal, up, down)
    xp = np if all(isinstance(a, np.ndarray) for a in arrays) else jnp
    total = nominal.sum()
    has_yield = total != 0

    def split(variation):
        ratio = xp.where(has_yield, variation.sum() / xp.where(has_yield, total, 1.0), 1.0)
        safe = xp.where(ratio != 0, ratio, 1.0)
        return ratio, xp.where(has_yield, variation / safe, nominal)

    norm_hi, hi_data = split(up)
    if down is None:
        norm_lo, lo_data = 2.0 - norm_hi, 2.0 * nominal - hi_data
    else:
        norm_lo, lo_data = split(down)
    # A normsys factor must stay positive (pyhf takes its log): an effect of -100 % or more
    # (e.g. 2 - hi with hi >= 2 from a few MC events) is floored at NORM_FLOOR.
    return xp.maximum(norm_hi, NORM_FLOOR), xp.maximum(norm_lo, NORM_FLOOR), hi_data, lo_data


def _normplusshape_modifiers(syst: Systematic, region: str, sample: str, templates: dict) -> list:
    """The ``normsys`` + ``histosys`` pair of a normplusshape systematic (cabinetry's order)."""

    def template(variation: str):
        key = variation_key(sample, variation)
        if key not in templates:
            raise DataError(f"region {region!r}: no template {key!r} for systematic "
                            f"{syst.name!r} (sample {sample!r}, variation {variation!r})")
        return templates[key]["nominal"]

    nominal = templates[sample]["nominal"]
    down = None if syst.symmetrise else template(syst.down)
    norm_hi, norm_lo, hi_data, lo_data = norm_plus_shape(nominal, template(syst.up), down)
    mods = [{"name": syst.name, "type": "normsys", "data": {"hi": norm_hi, "lo": norm_lo}}]
    if nominal.shape[0] > 1:  # a single bin has no shape (cabinetry adds no histosys then)
        mods.append({"name": syst.name, "type": "histosys",
                     "data": {"hi_data": hi_data, "lo_data": lo_data}})
    return mods


def to_json(spec: dict) -> dict:
    """The spec with every array leaf turned into a plain list of floats."""

    def convert(obj):
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        if isinstance(obj, (np.ndarray, jax.Array)):
            return np.asarray(obj, dtype=np.float64).tolist()
        if isinstance(obj, np.floating):
            return float(obj)
        return obj

    return convert(spec)
