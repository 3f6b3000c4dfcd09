"""The pyhf HistFactory specification built from the configuration and the histograms.

One channel per region, one pyhf sample per nominal sample. Modifiers:

- the POI (``model.poi``) as a ``normfactor`` on every signal sample,
- ``staterror`` per region (absolute uncertainty ``sqrt(Σw²)`` per bin) when
  ``model.staterror`` is on,
- ``normsys`` with the configured ``up``/``down`` factors,
- ``histosys`` whose up/down templates are the histograms of variation samples
  (a missing ``down`` is symmetrised as ``2·nominal − up``),
- ``lumi`` with auxiliary measurement ``1 ± up``.

The leaves of the spec may be JAX arrays (traced: the histograms depend on the cuts) or
NumPy arrays; :func:`to_json` turns it into plain JSON for ``pyhf.Workspace``.
"""

from __future__ import annotations

import jax
import numpy as np

from diffana.config import AnalysisConfig


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
                             "data": _safe_sqrt(y["sumw2"])})
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
            samples.append({"name": name, "data": y["nominal"], "modifiers": mods})
        channels.append({"name": region, "samples": samples})
        data = (observations or {}).get(region)
        if data is None:
            data = sum(yields[region][s]["nominal"] for s in cfg.nominal_samples)
        obs.append({"name": region, "data": data})

    parameters = [{"name": m.poi, "bounds": [[0.0, 10.0]], "inits": [1.0]}]
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


def _safe_sqrt(x):
    """``sqrt`` with a finite derivative at 0 (empty bins have no MC uncertainty)."""
    import jax.numpy as jnp

    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


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
