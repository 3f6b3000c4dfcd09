"""diffana's systematic types: one record per ``model.systematics[].type``, in one table.

A type says how to check a configured entry (``check``: the messages of the configuration
errors), which nominal samples it acts on (``samples``), the templates it reads for a sample
besides the nominal one (``templates``: keys of ``yields[region]``, histogram ``<region>_<key>``),
the pyhf modifiers it adds to a sample (``modifiers``) and the measurement parameters it
configures (``parameters``). The configuration schema, the pyhf spec
(:func:`diffana.stats.spec.build`) and ``diffana fit`` all read :data:`SYSTEMATICS`, so a new
type is one record here.

The types:

- ``normsys``: ``up``/``down`` are yield factors (e.g. 1.1/0.9) on ``samples``.
- ``histosys``: ``variations`` maps a sample to its ``{up: SAMPLE, down: SAMPLE}`` variation
  samples (``down`` may be omitted: symmetrised as ``2·nominal − up``).
- ``lumi``: ``up`` is the relative uncertainty on every sample listed; the parameter has
  auxiliary measurement ``1 ± up``.
- ``normplusshape`` (cabinetry's NormPlusShape): ``up``/``down`` name variations; the
  template of sample ``S`` is ``S_<variation>``. Each variation is split into a ``normsys`` and
  a ``histosys`` of the same name (see :func:`norm_plus_shape`).

This module is a leaf (NumPy, JAX, :mod:`diffana.exceptions`, :mod:`diffana.naming`):
the configuration schema imports it.

Example:
    >>> from types import SimpleNamespace
    >>> syst = SimpleNamespace(name="xsec", type="normsys", samples=["ttbar"], up=1.1,
    ...                        down=0.9, symmetrise=False, variations={})
    >>> check_systematic(syst)
    >>> kind = SYSTEMATICS["normsys"]
    >>> kind.samples(syst, ["ttbar", "wjets"])
    ['ttbar']
    >>> kind.modifiers(syst, "SR", "ttbar", {})
    [{'name': 'xsec', 'type': 'normsys', 'data': {'hi': 1.1, 'lo': 0.9}}]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from diffana.exceptions import DataError
from diffana.naming import variation_key

__all__ = ["NORM_FLOOR", "SYSTEMATICS", "SystematicType", "check_systematic", "norm_plus_shape"]

#: Normalisation factors of :func:`norm_plus_shape` are floored at this value.
NORM_FLOOR = 0.01


class SystematicType(NamedTuple):
    """How one type of systematic enters the model. ``syst`` is a configured ``Systematic``.

    Attributes:
        check: ``check(syst)`` raises ``ValueError`` (a configuration error) for an
            incomplete entry.
        samples: ``samples(syst, nominal_samples)``: the nominal samples it acts on.
        modifiers: ``modifiers(syst, region, sample, templates)``: the pyhf modifiers of
            ``sample`` in ``region``; ``templates`` is ``yields[region]``
            (``{key: {"nominal": ...}}``).
        templates: ``templates(syst, sample)``: the keys of ``yields[region]`` it reads
            for ``sample`` besides the nominal ``sample`` itself.
        parameters: ``parameters(syst)``: measurement parameter configurations.
        symmetrise: whether ``symmetrise: true`` applies to the type.
    """

    check: Callable[[Any], None]
    samples: Callable[[Any, list[str]], list[str]]
    modifiers: Callable[[Any, str, str, dict], list[dict]]
    templates: Callable[[Any, str], list[str]]
    parameters: Callable[[Any], list[dict]]
    symmetrise: bool = False


def check_systematic(syst: Any) -> None:
    """Raise ``ValueError`` (the configuration's message) when ``syst`` is incomplete."""
    kind = SYSTEMATICS[syst.type]
    kind.check(syst)
    if syst.symmetrise and not kind.symmetrise:
        allowed = " and ".join(name for name, k in SYSTEMATICS.items() if k.symmetrise)
        raise ValueError(f"symmetrise applies to {allowed} only, not {syst.type}")


# --- shared pieces ----------------------------------------------------------------------------


def _numbers(syst: Any) -> None:
    numbers = all(v is None or isinstance(v, float) for v in (syst.up, syst.down))
    if not numbers:
        raise ValueError(f"a {syst.type} needs numbers for up and down, got "
                         f"up={syst.up!r}, down={syst.down!r}")


def _listed(syst: Any, nominal_samples: list[str]) -> list[str]:
    return syst.samples


def _nothing(*args: Any) -> list:
    return []


# --- normsys ----------------------------------------------------------------------------------


def _check_normsys(syst: Any) -> None:
    _numbers(syst)
    if syst.up is None or syst.down is None or not syst.samples:
        raise ValueError("a normsys needs samples, up and down")


def _normsys_modifiers(syst: Any, region: str, sample: str, templates: dict) -> list[dict]:
    return [{"name": syst.name, "type": "normsys", "data": {"hi": syst.up, "lo": syst.down}}]


# --- histosys ---------------------------------------------------------------------------------


def _check_histosys(syst: Any) -> None:
    if not syst.variations:
        raise ValueError("a histosys needs variations: {sample: {up: ..., down: ...}}")
    for s, v in syst.variations.items():
        extra = set(v) - {"up", "down"}
        if "up" not in v or extra:
            raise ValueError(f"variations.{s} needs up (and optionally down), got {sorted(v)}")


def _histosys_samples(syst: Any, nominal_samples: list[str]) -> list[str]:
    return list(syst.variations)


def _histosys_templates(syst: Any, sample: str) -> list[str]:
    var = syst.variations[sample]
    return [var[k] for k in ("up", "down") if k in var]


def _histosys_modifiers(syst: Any, region: str, sample: str, templates: dict) -> list[dict]:
    var = syst.variations[sample]
    hi = templates[var["up"]]["nominal"]
    lo = (templates[var["down"]]["nominal"] if "down" in var
          else 2.0 * templates[sample]["nominal"] - hi)
    return [{"name": syst.name, "type": "histosys", "data": {"hi_data": hi, "lo_data": lo}}]


# --- lumi -------------------------------------------------------------------------------------


def _check_lumi(syst: Any) -> None:
    _numbers(syst)
    if syst.up is None or not syst.samples:
        raise ValueError("a lumi systematic needs samples and up (the relative uncertainty)")


def _lumi_modifiers(syst: Any, region: str, sample: str, templates: dict) -> list[dict]:
    return [{"name": syst.name, "type": "lumi", "data": None}]


def _lumi_parameters(syst: Any) -> list[dict]:
    return [{"name": syst.name, "auxdata": [1.0], "sigmas": [syst.up],
             "bounds": [[max(1e-3, 1.0 - 5 * syst.up), 1.0 + 5 * syst.up]], "inits": [1.0]}]


# --- normplusshape ----------------------------------------------------------------------------


def _check_normplusshape(syst: Any) -> None:
    if not isinstance(syst.up, str) or isinstance(syst.down, float):
        raise ValueError("a normplusshape needs up (and down) naming variations, e.g. "
                         f"up: pt_scale_up; got up={syst.up!r}, down={syst.down!r}")
    if (syst.down is None) != syst.symmetrise:
        raise ValueError("a normplusshape needs exactly one of down (a variation) and "
                         f"symmetrise: true; got down={syst.down!r}, "
                         f"symmetrise={syst.symmetrise}")


def _normplusshape_samples(syst: Any, nominal_samples: list[str]) -> list[str]:
    return syst.samples or nominal_samples


def _normplusshape_templates(syst: Any, sample: str) -> list[str]:
    variations = [syst.up] if syst.symmetrise else [syst.up, syst.down]
    return [variation_key(sample, v) for v in variations]


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


def _normplusshape_modifiers(syst: Any, region: str, sample: str, templates: dict) -> list[dict]:
    """The ``normsys`` + ``histosys`` pair of a normplusshape systematic (cabinetry's order)."""
    up_key, *down_key = _normplusshape_templates(syst, sample)

    def template(key: str, variation: str):
        if key not in templates:
            raise DataError(f"region {region!r}: no template {key!r} for systematic "
                            f"{syst.name!r} (sample {sample!r}, variation {variation!r})")
        return templates[key]["nominal"]

    nominal = templates[sample]["nominal"]
    down = None if syst.symmetrise else template(down_key[0], syst.down)
    norm_hi, norm_lo, hi_data, lo_data = norm_plus_shape(nominal, template(up_key, syst.up), down)
    mods = [{"name": syst.name, "type": "normsys", "data": {"hi": norm_hi, "lo": norm_lo}}]
    if nominal.shape[0] > 1:  # a single bin has no shape (cabinetry adds no histosys then)
        mods.append({"name": syst.name, "type": "histosys",
                     "data": {"hi_data": hi_data, "lo_data": lo_data}})
    return mods


# --- the table --------------------------------------------------------------------------------

#: Every systematic type by its configuration name (the order of the schema's error messages).
SYSTEMATICS: dict[str, SystematicType] = {
    "normsys": SystematicType(_check_normsys, _listed, _normsys_modifiers, _nothing, _nothing),
    "histosys": SystematicType(_check_histosys, _histosys_samples, _histosys_modifiers,
                               _histosys_templates, _nothing),
    "lumi": SystematicType(_check_lumi, _listed, _lumi_modifiers, _nothing, _lumi_parameters),
    "normplusshape": SystematicType(_check_normplusshape, _normplusshape_samples,
                                    _normplusshape_modifiers, _normplusshape_templates,
                                    _nothing, symmetrise=True),
}
