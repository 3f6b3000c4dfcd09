"""The pyhf HistFactory specification built from the configuration and the histograms.

One channel per region, one pyhf sample per nominal sample. Modifiers:

- the POI (``model.poi``) as a ``normfactor`` on every signal sample,
- ``staterror`` per region (absolute uncertainty ``sqrt(Σw²)`` per bin) when
  ``model.staterror`` is on,
- per configured systematic, the modifiers of its type (:data:`diffana.systematics.SYSTEMATICS`):
  ``normsys`` with the configured ``up``/``down`` factors; ``histosys`` whose up/down
  templates are the histograms of variation samples (a missing ``down`` is symmetrised as
  ``2·nominal − up``); ``lumi`` with auxiliary measurement ``1 ± up``; ``normplusshape`` as
  cabinetry's NormPlusShape, a ``normsys`` and a ``histosys`` of the same name (see
  :func:`diffana.systematics.norm_plus_shape`) from the variation templates
  ``yields[region][variation_key(sample, variation)]``.

The leaves of the spec may be JAX arrays (traced: the histograms depend on the cuts) or
NumPy arrays; :func:`to_json` turns it into plain JSON for ``pyhf.Workspace``.

Example:
    >>> import numpy as np
    >>> from diffana.config import load_dict
    >>> import yaml
    >>> cfg = load_dict(yaml.safe_load('''
    ... samples: {sig: {files: [s.root], cross_section: 1}, bkg: {files: [b.root], cross_section: 10}}
    ... objects: {jets: {source: Jet}}
    ... observables: {ht: {kind: sum, collection: jets, field: pt}}
    ... regions: {SR: {observable: ht, binning: {bins: 2, low: 0, high: 200}}}
    ... model: {signal: [sig]}
    ... luminosity: 1
    ... '''))
    >>> yields = {"SR": {"sig": {"nominal": np.array([1.0, 2.0])},
    ...                  "bkg": {"nominal": np.array([10.0, 5.0])}}}
    >>> workspace = to_json(build(cfg, yields))
    >>> workspace["observations"]
    [{'name': 'SR', 'data': [11.0, 7.0]}]
"""

from __future__ import annotations

import jax
import numpy as np

from diffana.config import AnalysisConfig
from diffana.stats.infer import safe_sqrt
from diffana.systematics import SYSTEMATICS

__all__ = ["build", "staterror_name", "to_json"]


def staterror_name(region: str) -> str:
    """The name of the staterror modifier of ``region``."""
    return f"staterror_{region}"


def build(cfg: AnalysisConfig, yields: dict, observations: dict | None = None) -> dict:
    """A pyhf workspace spec for ``yields[region][sample] = {"nominal", "sumw2"}``.

    ``observations`` defaults to the Asimov data at POI = 1 with nominal nuisances (the sum
    of the nominal yields of all samples).

    Raises:
        DataError: a variation template a systematic needs is not in ``yields``.
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
                kind = SYSTEMATICS[syst.type]
                if name in kind.samples(syst, cfg.nominal_samples):
                    mods.extend(kind.modifiers(syst, region, name, yields[region]))
            samples.append({"name": name, "data": y["nominal"], "modifiers": mods})
        channels.append({"name": region, "samples": samples})
        data = (observations or {}).get(region)
        if data is None:
            data = sum(yields[region][s]["nominal"] for s in cfg.nominal_samples)
        obs.append({"name": region, "data": data})

    parameters = [{"name": m.poi, "bounds": [list(m.poi_bounds)], "inits": [1.0]}]
    for syst in m.systematics:
        parameters.extend(SYSTEMATICS[syst.type].parameters(syst))
    return {
        "channels": channels,
        "observations": obs,
        "measurements": [{"name": "measurement",
                          "config": {"poi": m.poi, "parameters": parameters}}],
        "version": "1.0.0",
    }


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
