"""The structure of a spec, read once from pyhf: parameters, bins and where modifiers sit.

:class:`Structure` is the first step of building a :class:`~diffana.stats.Model` (pyhf's
``_ModelConfig``): it validates the spec, builds the ``pyhf.Model`` (NumPy backend) and reads
from it the parameter order, inits, bounds and fixed flags, the POI, the channels, samples and
their bins, and the auxiliary-data layout. The main and constraint terms build their index
layouts from it.

Example:
    >>> import pyhf  # a signal and a background with uncorrelated bin uncertainties
    >>> spec = pyhf.simplemodels.uncorrelated_background([5.0, 2.0], [50.0, 20.0], [5.0, 4.0]).spec
    >>> structure = Structure(spec)
    >>> structure.par_names, structure.n_bins, structure.n_aux
    (['mu', 'uncorr_bkguncrt[0]', 'uncorr_bkguncrt[1]'], 2, 2)
    >>> [(kind, site.sample, site.first_par) for kind, site in structure.sites()]
    [('normfactor', 'signal', 0), ('shapesys', 'background', 1)]
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pyhf

from diffana.stats.modifiers import DEFAULT_MODIFIER_SETTINGS, MODIFIERS, Site

__all__ = ["Structure"]


class Structure:
    """What a spec fixes: parameters, channels, samples, bins, and where each modifier acts.

    Args:
        spec: A pyhf model spec or workspace spec (the first measurement is used).
        poi_name: Name of the parameter of interest; defaults to the measurement's POI for a
            workspace and to ``"mu"`` for a model spec.
        modifier_settings: pyhf's ``modifier_settings`` (the interpolation codes, see
            :func:`~diffana.stats.modifiers.modifier_settings`); ``None``: the defaults.
        measurement: For a workspace, the name of the measurement to use (default: the first).

    Raises:
        ValueError: a modifier type is not in :data:`~diffana.stats.modifiers.MODIFIERS`.

    Attributes:
        spec, pyhf_model, par_names, poi_index, suggested_init, suggested_bounds,
        suggested_fixed, channels, samples, channel_nbins, n_bins, n_pars, n_aux: as
        :class:`~diffana.stats.Model` documents them.
        modifier_settings: The ``modifier_settings`` the model was built with.
        offsets: The first bin of each channel among all bins.
        user_parameters: The spec's ``"parameters"`` entries by name (user configuration).
    """

    def __init__(self, spec: dict, poi_name: str | None = None,
                 modifier_settings: dict | None = None, measurement: str | None = None):
        self.spec = copy.deepcopy(spec)
        for channel in spec["channels"]:
            for sample in channel["samples"]:
                for modifier in sample["modifiers"]:
                    if modifier["type"] not in MODIFIERS:
                        raise ValueError(
                            f"channels[{channel['name']}].samples[{sample['name']}]: modifier "
                            f"type {modifier['type']!r} is not supported "
                            f"(supported: {', '.join(MODIFIERS)})"
                        )
        self.modifier_settings = copy.deepcopy(modifier_settings or DEFAULT_MODIFIER_SETTINGS)
        settings = {"modifier_settings": self.modifier_settings, "validate": True}
        if "measurements" in spec:
            workspace = pyhf.Workspace(spec)
            if measurement is not None:
                settings["measurement_name"] = measurement
            if poi_name is not None:
                settings["poi_name"] = poi_name
            # the model's spec is the workspace's channels and measurement parameters, both
            # validated with the workspace
            self.pyhf_model = workspace.model(**{**settings, "validate": False})
        else:
            self.pyhf_model = pyhf.Model(
                spec, poi_name="mu" if poi_name is None else poi_name, **settings
            )
        config = self.pyhf_model.config
        self.par_names: list[str] = list(config.par_names)
        self.poi_index: int | None = config.poi_index
        self.suggested_init = np.asarray(config.suggested_init(), dtype=np.float64)
        self.suggested_bounds = np.asarray(config.suggested_bounds(), dtype=np.float64)
        self.suggested_fixed = np.asarray(config.suggested_fixed(), dtype=bool)
        self.channels: list[str] = list(config.channels)
        self.samples: list[str] = list(config.samples)
        self.channel_nbins: dict[str, int] = dict(config.channel_nbins)
        self.n_bins = int(sum(self.channel_nbins.values()))
        self.n_pars = int(config.npars)
        self.n_aux = len(config.auxdata)
        self.offsets: dict[str, int] = {}
        start = 0
        for channel in self.channels:
            self.offsets[channel] = start
            start += self.channel_nbins[channel]
        self.user_parameters = {p["name"]: p for p in self.pyhf_model.spec.get("parameters", [])}

    def channel_bins(self, channel: str) -> np.ndarray:
        """The bins of ``channel`` among all bins (pyhf order)."""
        first = self.offsets[channel]
        return np.arange(first, first + self.channel_nbins[channel])

    def sample_bins(self) -> Iterator[tuple[str, str, np.ndarray]]:
        """``(channel, sample, bins)`` for every sample of every channel, in spec order."""
        for channel in self.spec["channels"]:
            bins = self.channel_bins(channel["name"])
            for sample in channel["samples"]:
                yield channel["name"], sample["name"], bins

    def sites(self) -> Iterator[tuple[str, Site]]:
        """``(modifier type, site)`` for every modifier of every sample, in spec order."""
        covered: dict[tuple[str, str], list[int]] = {}
        for channel in self.spec["channels"]:
            for sample in channel["samples"]:
                for modifier in sample["modifiers"]:
                    bins = covered.setdefault((modifier["type"], modifier["name"]), [])
                    for b in self.channel_bins(channel["name"]).tolist():
                        if b not in bins:
                            bins.append(b)
        covered = {key: sorted(bins) for key, bins in covered.items()}
        config = self.pyhf_model.config
        for channel in self.spec["channels"]:
            bins = self.channel_bins(channel["name"])
            for sample in channel["samples"]:
                for modifier in sample["modifiers"]:
                    m_type, m_name = modifier["type"], modifier["name"]
                    yield m_type, Site(channel["name"], sample["name"], m_name, bins,
                                       config.par_slice(m_name).start,
                                       covered[m_type, m_name])

    def templated_constraint(self, name: str) -> str | None:
        """Which constraint number (``"sigma"``, ``"tau"``) the templates set for the
        parameter ``name``, if any: the ``templated`` of its modifier type."""
        for channel in self.spec["channels"]:
            for sample in channel["samples"]:
                for modifier in sample["modifiers"]:
                    templated = MODIFIERS[modifier["type"]].templated
                    if modifier["name"] == name and templated is not None:
                        return templated
        return None
