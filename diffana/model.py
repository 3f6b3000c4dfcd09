"""A differentiable HistFactory likelihood that follows a pyhf JSON spec.

pyhf 0.7.6 builds its model with NumPy, so it cannot differentiate with respect to the
*yields* of a spec (pyhf issue #882). :class:`Model` reads the *structure* of a spec once
(channels, samples, modifiers, parameter order, bounds, auxiliary-data layout) from a
``pyhf.Model`` built with the NumPy backend, and evaluates the likelihood as a pure JAX
function of ``(pars, data, templates)``. ``templates`` is a plain nested dict holding every
number of the spec (nominal yields, normsys factors, histosys templates, staterror and
shapesys uncertainties), so a differentiable analysis can build it from its own histograms
and take ``jax.grad`` with respect to them.

The likelihood is pyhf's, term by term: the main Poisson term with the continuous
(``gammaln``) extension to non-integer data, Gaussian constraints for normsys, histosys, lumi
and staterror, Poisson constraints for shapesys, and pyhf's default interpolation codes
(``code4`` for normsys, ``code4p`` for histosys). The test suite holds
:meth:`Model.logpdf` equal to ``pyhf.Model.logpdf`` to 1e-10 relative.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> spec = {"channels": [{"name": "SR", "samples": [
    ...     {"name": "signal", "data": [5.0, 2.0],
    ...      "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
    ...     {"name": "ttbar", "data": [50.0, 20.0],
    ...      "modifiers": [{"name": "bkg_unc", "type": "shapesys", "data": [5.0, 4.0]}]},
    ... ]}]}
    >>> model = Model(spec)
    >>> model.par_names
    ['mu', 'bkg_unc[0]', 'bkg_unc[1]']
    >>> templates = model.templates()
    >>> pars = model.suggested_init
    >>> data = model.expected_data(pars, templates)
    >>> print(f"{float(model.logpdf(pars, data, templates)):.6f}")
    -11.146434
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyhf

__all__ = ["Model", "RATE_FLOOR", "Templates"]

#: A nested dict ``{channel: {sample: {...}}}`` of float64 JAX arrays; see :meth:`Model.templates`.
Templates = dict[str, dict[str, dict[str, Any]]]

#: Expected rates ``<= 0`` are replaced by this value inside ``log`` (see :meth:`Model.logpdf`).
RATE_FLOOR = float(np.finfo(np.float64).tiny)

_DEFAULT_MODIFIER_SETTINGS = {
    "normsys": {"interpcode": "code4"},
    "histosys": {"interpcode": "code4p"},
}

# Inverse of the 6x6 system fixing the code4 polynomial at alpha0 = 1 (value, first and
# second derivative matched to the exponential pieces at +-alpha0); pyhf interpolators/code4.py.
_CODE4_A_INVERSE = np.array(
    [
        [15.0 / 16, -15.0 / 16, -7.0 / 16, -7.0 / 16, 1.0 / 16, -1.0 / 16],
        [3.0 / 2, 3.0 / 2, -9.0 / 16, 9.0 / 16, 1.0 / 16, 1.0 / 16],
        [-5.0 / 8, 5.0 / 8, 5.0 / 8, 5.0 / 8, -1.0 / 8, 1.0 / 8],
        [3.0 / -2, 3.0 / -2, -7.0 / -8, 7.0 / -8, -1.0 / 8, -1.0 / 8],
        [3.0 / 16, -3.0 / 16, -3.0 / 16, -3.0 / 16, 1.0 / 16, -1.0 / 16],
        [1.0 / 2, 1.0 / 2, -5.0 / 16, 5.0 / 16, 1.0 / 16, 1.0 / 16],
    ]
)

_SUPPORTED_MODIFIERS = (
    "normfactor",
    "normsys",
    "histosys",
    "staterror",
    "shapesys",
    "lumi",
    "shapefactor",
)


def _f64(x: Any) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float64)


def normsys_code4(alpha: jax.Array, hi: jax.Array, lo: jax.Array) -> jax.Array:
    """Multiplicative normsys factor with pyhf's ``code4`` interpolation (alpha0 = 1).

    Exponential ``hi**alpha`` for ``alpha >= 1``, ``lo**(-alpha)`` for ``alpha <= -1``, and in
    between the 6th-order polynomial that matches value, slope and curvature at +-1.

    Args:
        alpha: Nuisance-parameter values (broadcast against ``hi`` and ``lo``).
        hi: Factor at ``alpha = +1`` (must be > 0).
        lo: Factor at ``alpha = -1`` (must be > 0).

    Returns:
        The factor, with the broadcast shape of the inputs.
    """
    log_hi, log_lo = jnp.log(hi), jnp.log(lo)
    rhs = jnp.stack(
        [hi - 1.0, lo - 1.0, log_hi * hi, -log_lo * lo, log_hi**2 * hi, log_lo**2 * lo]
    )
    a1, a2, a3, a4, a5, a6 = jnp.tensordot(_f64(_CODE4_A_INVERSE), rhs, axes=1)
    # Horner form: cheaper to differentiate twice (and to compile) than a sum of powers.
    polynomial = 1.0 + alpha * (a1 + alpha * (a2 + alpha * (a3 + alpha * (a4 + alpha * (a5 + alpha * a6)))))
    abs_alpha = jnp.abs(alpha)
    # Each branch is finite for hi, lo > 0, so the unselected ones cannot leak NaN gradients.
    return jnp.where(
        alpha >= 1.0,
        jnp.exp(abs_alpha * log_hi),
        jnp.where(alpha > -1.0, polynomial, jnp.exp(abs_alpha * log_lo)),
    )


def histosys_code4p(
    alpha: jax.Array, lo: jax.Array, nominal: jax.Array, hi: jax.Array
) -> jax.Array:
    """Additive histosys shift with pyhf's ``code4p`` interpolation.

    Linear outside ``|alpha| <= 1``, a 6th-order polynomial inside.

    Args:
        alpha: Nuisance-parameter values, one per bin.
        lo: Template at ``alpha = -1``.
        nominal: Nominal template.
        hi: Template at ``alpha = +1``.

    Returns:
        The shift to add to the nominal yields.
    """
    delta_up = hi - nominal
    delta_down = nominal - lo
    symmetric = 0.5 * (delta_up + delta_down)
    antisymmetric = 0.0625 * (delta_up - delta_down)
    alpha2 = alpha**2
    inside = alpha2 * (alpha2 * (alpha2 * 3.0 - 10.0) + 15.0) * antisymmetric
    inside = inside + alpha * symmetric
    return jnp.where(
        alpha < -1.0,
        alpha * delta_down,
        jnp.where(alpha > 1.0, alpha * delta_up, inside),
    )


def _poisson_logpdf(n: jax.Array, rate: jax.Array) -> jax.Array:
    """``n log(rate) - rate - lgamma(n + 1)`` with rates ``<= 0`` floored inside the log."""
    safe_rate = jnp.where(rate > 0.0, rate, RATE_FLOOR)
    return n * jnp.log(safe_rate) - rate - jax.scipy.special.gammaln(n + 1.0)


def _normal_logpdf(x: jax.Array, mean: jax.Array, sigma: jax.Array) -> jax.Array:
    """Gaussian log density, written as pyhf's NumPy backend writes it."""
    return -jnp.log(sigma * np.sqrt(2.0 * np.pi)) - ((x - mean) / (np.sqrt(2.0) * sigma)) ** 2


class Model:
    """A HistFactory model whose numbers are JAX inputs and whose structure is a pyhf spec.

    Built once per spec *structure*: the constructor validates the spec and asks pyhf
    (NumPy backend) for the parameter order, suggested inits, bounds and fixed flags, the POI,
    and the auxiliary-data layout. All numerical methods are pure functions of their
    arguments (``pars``, ``data``, ``templates``): jit-able, and differentiable with respect
    to all three (forward and reverse mode). A ``Model`` is hashable by identity, so it can be
    a static argument of ``jax.jit``.

    Numbers that are *not* templates stay fixed at their construction values: the measurement
    configuration (lumi auxdata and sigma, user-set bounds, inits and fixed flags) and the
    ``fixed`` flags pyhf derives from the construction yields (staterror bins with zero
    uncertainty, shapesys bins with zero yield or uncertainty).

    Args:
        spec: A pyhf model spec (``{"channels": ..., "parameters": ...}``) or a pyhf workspace
            spec (with ``"measurements"`` and ``"observations"``; the first measurement is
            used, with its POI and parameter configuration).
        poi_name: Name of the parameter of interest. Defaults to the measurement's POI for a
            workspace and to ``"mu"`` for a model spec.

    Attributes:
        pyhf_model: The ``pyhf.Model`` (NumPy backend) the structure was read from.
        spec: A deep copy of the spec given to the constructor.
        par_names: One label per scalar parameter, in pyhf order (``"staterror_SR[0]"``, ...).
        poi_index: Index of the POI in the parameter vector (``None`` without a POI).
        suggested_init: pyhf's suggested initial parameter values, float64.
        suggested_bounds: pyhf's suggested bounds, shape ``(n_pars, 2)``.
        suggested_fixed: pyhf's fixed flags, bool.
        channels: Channel names in pyhf order (sorted).
        samples: Sample names in pyhf order (sorted).
        channel_nbins: Number of bins per channel.
        n_bins: Total number of bins (length of the main data).
        n_aux: Length of the auxiliary data.
    """

    def __init__(self, spec: dict, poi_name: str | None = None):
        self.spec = copy.deepcopy(spec)
        self._is_workspace = "measurements" in spec
        for channel in spec["channels"]:
            for sample in channel["samples"]:
                for modifier in sample["modifiers"]:
                    if modifier["type"] not in _SUPPORTED_MODIFIERS:
                        raise ValueError(
                            f"channels[{channel['name']}].samples[{sample['name']}]: modifier "
                            f"type {modifier['type']!r} is not supported "
                            f"(supported: {', '.join(_SUPPORTED_MODIFIERS)})"
                        )
        settings = {"modifier_settings": _DEFAULT_MODIFIER_SETTINGS, "validate": True}
        if self._is_workspace:
            workspace = pyhf.Workspace(spec)
            if poi_name is not None:
                settings["poi_name"] = poi_name
            self.pyhf_model = workspace.model(**settings)
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
        self._build_structure(config)

    # ------------------------------------------------------------------ structure (static)

    def _build_structure(self, config: Any) -> None:
        n_pars, n_bins = self.n_pars, self.n_bins
        sample_index = {name: i for i, name in enumerate(self.samples)}
        offsets, start = {}, 0
        for channel in self.channels:
            offsets[channel] = start
            start += self.channel_nbins[channel]

        user_configs = {p["name"]: p for p in self.pyhf_model.spec.get("parameters", [])}

        # Where each (channel, sample) sits in the flattened (sample, bin) rate array.
        self._nominal_entries: list[tuple[str, str]] = []
        nominal_positions = []
        # Multiplicative factors: per (sample, bin), a list of indices into
        # concat([pars, normsys_factors, [1.0]]).
        factor_lists: list[list[list[int]]] = [
            [[] for _ in range(n_bins)] for _ in self.samples
        ]
        normsys_entries = []  # (channel, sample, name, par index)
        histosys_entries = []  # (channel, sample, name, par index)
        staterror_entries = []  # (channel, sample, name, par indices per bin)
        shapesys_entries = []  # (channel, sample, name, par indices per bin)
        staterror_bins: dict[str, list[int]] = {}

        # Global bins covered by each staterror modifier (its parameters, in bin order).
        for channel in self.spec["channels"]:
            for sample in channel["samples"]:
                for modifier in sample["modifiers"]:
                    if modifier["type"] == "staterror":
                        bins = staterror_bins.setdefault(modifier["name"], [])
                        first = offsets[channel["name"]]
                        for b in range(first, first + self.channel_nbins[channel["name"]]):
                            if b not in bins:
                                bins.append(b)
        staterror_bins = {name: sorted(bins) for name, bins in staterror_bins.items()}

        for channel in self.spec["channels"]:
            c_name = channel["name"]
            nbins = self.channel_nbins[c_name]
            first = offsets[c_name]
            bins = np.arange(first, first + nbins)
            for sample in channel["samples"]:
                s_name = sample["name"]
                s = sample_index[s_name]
                self._nominal_entries.append((c_name, s_name))
                nominal_positions.append(s * n_bins + bins)
                for modifier in sample["modifiers"]:
                    m_type, m_name = modifier["type"], modifier["name"]
                    par_slice = config.par_slice(m_name)
                    if m_type in ("normfactor", "lumi"):
                        for b in bins:
                            factor_lists[s][b].append(par_slice.start)
                    elif m_type == "shapefactor":
                        for j, b in enumerate(bins):
                            factor_lists[s][b].append(par_slice.start + j)
                    elif m_type == "normsys":
                        index = n_pars + len(normsys_entries)
                        normsys_entries.append((c_name, s_name, m_name, par_slice.start))
                        for b in bins:
                            factor_lists[s][b].append(index)
                    elif m_type == "histosys":
                        histosys_entries.append((c_name, s_name, m_name, par_slice.start))
                    elif m_type == "staterror":
                        covered = staterror_bins[m_name]
                        indices = [par_slice.start + covered.index(b) for b in bins]
                        staterror_entries.append((c_name, s_name, m_name, indices))
                        for b, index in zip(bins, indices, strict=True):
                            factor_lists[s][b].append(index)
                    elif m_type == "shapesys":
                        indices = list(range(par_slice.start, par_slice.start + nbins))
                        shapesys_entries.append((c_name, s_name, m_name, indices))
                        for b, index in zip(bins, indices, strict=True):
                            factor_lists[s][b].append(index)

        self._nominal_positions = np.concatenate(nominal_positions).astype(np.int64)
        self._normsys_entries = normsys_entries
        self._normsys_pars = np.array([e[3] for e in normsys_entries], dtype=np.int64)
        one_index = n_pars + len(normsys_entries)
        depth = max([1] + [len(f) for per_sample in factor_lists for f in per_sample])
        factor_index = np.full((depth, len(self.samples), n_bins), one_index, dtype=np.int64)
        for s, per_sample in enumerate(factor_lists):
            for b, indices in enumerate(per_sample):
                factor_index[: len(indices), s, b] = indices
        self._factor_index = factor_index

        self._histosys_entries = histosys_entries
        positions, alphas = [], []
        for c_name, s_name, _, par in histosys_entries:
            nbins = self.channel_nbins[c_name]
            first = offsets[c_name]
            positions.append(sample_index[s_name] * n_bins + np.arange(first, first + nbins))
            alphas.append(np.full(nbins, par))
        self._histosys_positions = np.concatenate(positions or [np.zeros(0)]).astype(np.int64)
        self._histosys_pars = np.concatenate(alphas or [np.zeros(0)]).astype(np.int64)

        self._staterror_entries = staterror_entries
        self._staterror_pars = np.array(
            [i for e in staterror_entries for i in e[3]], dtype=np.int64
        )
        self._shapesys_entries = shapesys_entries
        self._shapesys_pars = np.array(
            [i for e in shapesys_entries for i in e[3]], dtype=np.int64
        )

        # Auxiliary data layout: entry i constrains parameter aux_pars[i].
        aux_pars, aux_is_normal = [], []
        static_sigma, static_factor = [], []
        sigma_from_templates, factor_from_templates, auxdata_from_templates = [], [], []
        for name in config.auxdata_order:
            param_set = config.param_set(name)
            par_slice = config.par_slice(name)
            n = param_set.n_parameters
            aux_pars.extend(range(par_slice.start, par_slice.start + n))
            user = user_configs.get(name, {})
            modifier_type = self._modifier_type(name)
            if param_set.pdf_type == "normal":
                aux_is_normal.extend([True] * n)
                static_sigma.extend(param_set.width())
                static_factor.extend([1.0] * n)
                dynamic = modifier_type == "staterror" and "sigmas" not in user
                sigma_from_templates.extend([dynamic] * n)
                factor_from_templates.extend([False] * n)
                auxdata_from_templates.extend([False] * n)
            elif param_set.pdf_type == "poisson":
                aux_is_normal.extend([False] * n)
                static_sigma.extend([1.0] * n)
                static_factor.extend(param_set.factors)
                sigma_from_templates.extend([False] * n)
                factor_from_templates.extend([modifier_type == "shapesys" and "factors" not in user] * n)
                auxdata_from_templates.extend([modifier_type == "shapesys" and "auxdata" not in user] * n)
            else:  # pragma: no cover - pyhf has no other constraint types
                raise ValueError(f"unknown constraint type {param_set.pdf_type!r} for {name}")
        self._aux_pars = np.array(aux_pars, dtype=np.int64)
        self._aux_is_normal = np.array(aux_is_normal, dtype=bool)
        self._static_auxdata = np.asarray(config.auxdata, dtype=np.float64)
        self._static_sigma = np.asarray(static_sigma, dtype=np.float64)
        self._static_factor = np.asarray(static_factor, dtype=np.float64)
        self._sigma_from_templates = np.array(sigma_from_templates, dtype=bool)
        self._factor_from_templates = np.array(factor_from_templates, dtype=bool)
        self._auxdata_from_templates = np.array(auxdata_from_templates, dtype=bool)
        self._normal_aux = np.flatnonzero(self._aux_is_normal)
        self._poisson_aux = np.flatnonzero(~self._aux_is_normal)

    def _modifier_type(self, name: str) -> str | None:
        for channel in self.spec["channels"]:
            for sample in channel["samples"]:
                for modifier in sample["modifiers"]:
                    if modifier["name"] == name and modifier["type"] in (
                        "staterror",
                        "shapesys",
                        "normsys",
                        "histosys",
                        "lumi",
                    ):
                        return modifier["type"]
        return None

    # ------------------------------------------------------------------ templates <-> spec

    def templates(self, spec: dict | None = None) -> Templates:
        """The numbers of a spec as a pytree of float64 JAX arrays.

        Layout (only the modifier types a sample carries appear)::

            {channel: {sample: {
                "data": (nbins,),                                   # nominal yields
                "normsys": {name: {"hi": (), "lo": ()}},            # factors at alpha = +-1
                "histosys": {name: {"hi_data": (nbins,), "lo_data": (nbins,)}},
                "staterror": {name: (nbins,)},                      # absolute uncertainties
                "shapesys": {name: (nbins,)},                       # absolute uncertainties
            }}}

        normfactor, shapefactor and lumi carry no numbers in a spec, so they have no entry.
        A caller may build this dict from its own (traced) yields, for example replacing
        ``"data"`` with differentiable histograms.

        Args:
            spec: A spec with the same structure as the one given to the constructor;
                defaults to that one.

        Returns:
            The nested dict of templates.
        """
        spec = self.spec if spec is None else spec
        out: Templates = {}
        for channel in spec["channels"]:
            per_channel = out.setdefault(channel["name"], {})
            for sample in channel["samples"]:
                leaves: dict[str, Any] = {"data": _f64(sample["data"])}
                for modifier in sample["modifiers"]:
                    m_type, m_name, m_data = modifier["type"], modifier["name"], modifier["data"]
                    if m_type == "normsys":
                        value = {"hi": _f64(m_data["hi"]), "lo": _f64(m_data["lo"])}
                    elif m_type == "histosys":
                        value = {"hi_data": _f64(m_data["hi_data"]), "lo_data": _f64(m_data["lo_data"])}
                    elif m_type in ("staterror", "shapesys"):
                        value = _f64(m_data)
                    else:
                        continue
                    leaves.setdefault(m_type, {})[m_name] = value
                per_channel[sample["name"]] = leaves
        return out

    def spec_with(self, templates: Templates, observations: dict | None = None) -> dict:
        """The construction spec with the numbers of ``templates`` written in.

        Args:
            templates: Numbers in the layout of :meth:`templates` (JAX or NumPy arrays;
                concrete values, not tracers).
            observations: Optional ``{channel: yields}`` written into a workspace spec's
                ``"observations"`` (ignored for a model spec).

        Returns:
            A new spec dict of plain Python floats, ready for ``pyhf.Workspace`` /
            ``json.dump``.
        """

        def floats(x: Any) -> Any:
            array = np.asarray(x, dtype=np.float64)
            return float(array) if array.ndim == 0 else [float(v) for v in array]

        spec = copy.deepcopy(self.spec)
        for channel in spec["channels"]:
            for sample in channel["samples"]:
                leaves = templates[channel["name"]][sample["name"]]
                sample["data"] = floats(leaves["data"])
                for modifier in sample["modifiers"]:
                    m_type, m_name = modifier["type"], modifier["name"]
                    if m_type == "normsys":
                        value = leaves["normsys"][m_name]
                        modifier["data"] = {"hi": floats(value["hi"]), "lo": floats(value["lo"])}
                    elif m_type == "histosys":
                        value = leaves["histosys"][m_name]
                        modifier["data"] = {
                            "hi_data": floats(value["hi_data"]),
                            "lo_data": floats(value["lo_data"]),
                        }
                    elif m_type in ("staterror", "shapesys"):
                        modifier["data"] = floats(leaves[m_type][m_name])
        if observations is not None and "observations" in spec:
            for observation in spec["observations"]:
                if observation["name"] in observations:
                    observation["data"] = floats(observations[observation["name"]])
        return spec

    # ------------------------------------------------------------------ likelihood

    def _rates_by_sample(self, pars: jax.Array, templates: Templates) -> jax.Array:
        n_samples, n_bins = len(self.samples), self.n_bins
        nominal_values = [templates[c][s]["data"] for c, s in self._nominal_entries]
        flat = jnp.zeros(n_samples * n_bins, dtype=jnp.float64)
        flat = flat.at[self._nominal_positions].set(jnp.concatenate(nominal_values))
        if self._histosys_entries:
            his, los, noms = [], [], []
            for c, s, m, _ in self._histosys_entries:
                leaves = templates[c][s]
                his.append(leaves["histosys"][m]["hi_data"])
                los.append(leaves["histosys"][m]["lo_data"])
                noms.append(leaves["data"])
            delta = histosys_code4p(
                pars[self._histosys_pars],
                jnp.concatenate(los),
                jnp.concatenate(noms),
                jnp.concatenate(his),
            )
            flat = flat.at[self._histosys_positions].add(delta)
        if self._normsys_entries:
            hi = jnp.stack([_f64(templates[c][s]["normsys"][m]["hi"]) for c, s, m, _ in self._normsys_entries])
            lo = jnp.stack([_f64(templates[c][s]["normsys"][m]["lo"]) for c, s, m, _ in self._normsys_entries])
            normsys_factors = normsys_code4(pars[self._normsys_pars], hi, lo)
        else:
            normsys_factors = jnp.zeros(0, dtype=jnp.float64)
        factor_values = jnp.concatenate([pars, normsys_factors, jnp.ones(1, dtype=jnp.float64)])
        gathered = factor_values[self._factor_index]
        # An explicit product over the (few, static) factor slots: jnp.prod's derivative rule
        # guards against zeros and makes second derivatives (Newton's Hessian) costly to compile.
        factors = gathered[0]
        for k in range(1, gathered.shape[0]):
            factors = factors * gathered[k]
        return factors * flat.reshape(n_samples, n_bins)

    def expected_actualdata(self, pars: jax.Array, templates: Templates) -> jax.Array:
        """Expected main-measurement yields, all bins of all channels in pyhf order.

        Args:
            pars: Parameter values, shape ``(n_pars,)``, pyhf order.
            templates: The numbers of the spec (see :meth:`templates`).

        Returns:
            Expected yields, shape ``(n_bins,)``.
        """
        pars = _f64(pars)
        return jnp.sum(self._rates_by_sample(pars, templates), axis=0)

    def expected_by_sample(self, pars: jax.Array, templates: Templates) -> jax.Array:
        """Expected yields per sample, shape ``(n_samples, n_bins)``, samples in pyhf order."""
        return self._rates_by_sample(_f64(pars), templates)

    def _constraint_numbers(self, templates: Templates) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Auxdata, Gaussian widths and Poisson rate factors, one per aux entry."""
        n_pars = self.n_pars
        sigma_par = jnp.ones(n_pars, dtype=jnp.float64)
        tau_par = jnp.ones(n_pars, dtype=jnp.float64)
        if self._staterror_entries:
            nominal = jnp.concatenate([templates[c][s]["data"] for c, s, _, _ in self._staterror_entries])
            uncertainty = jnp.concatenate(
                [templates[c][s]["staterror"][m] for c, s, m, _ in self._staterror_entries]
            )
            index = self._staterror_pars
            total_nominal = jnp.zeros(n_pars, dtype=jnp.float64).at[index].add(nominal)[index]
            positive = total_nominal > 0.0
            ratio = uncertainty / jnp.where(positive, total_nominal, 1.0)
            relative2 = jnp.zeros(n_pars, dtype=jnp.float64).at[index].add(
                jnp.where(positive, ratio**2, 0.0)
            )
            has_width = relative2 > 0.0
            # pyhf fixes zero-width staterror parameters and gives them width 1.
            sigma_par = jnp.where(has_width, jnp.sqrt(jnp.where(has_width, relative2, 1.0)), 1.0)
        if self._shapesys_entries:
            nominal = jnp.concatenate([templates[c][s]["data"] for c, s, _, _ in self._shapesys_entries])
            uncertainty = jnp.concatenate(
                [templates[c][s]["shapesys"][m] for c, s, m, _ in self._shapesys_entries]
            )
            valid = (nominal > 0.0) & (uncertainty > 0.0)
            tau = jnp.where(valid, nominal**2 / jnp.where(valid, uncertainty, 1.0) ** 2, 1.0)
            tau_par = tau_par.at[self._shapesys_pars].set(tau)
        aux_pars = self._aux_pars
        auxdata = jnp.where(self._auxdata_from_templates, tau_par[aux_pars], self._static_auxdata)
        sigma = jnp.where(self._sigma_from_templates, sigma_par[aux_pars], self._static_sigma)
        factor = jnp.where(self._factor_from_templates, tau_par[aux_pars], self._static_factor)
        return auxdata, sigma, factor

    def auxdata(self, templates: Templates) -> jax.Array:
        """Auxiliary data in pyhf order (``model.config.auxdata``).

        Only the shapesys entries (``tau = (nominal / uncertainty)**2``) depend on the
        templates; the others are the spec's (1 for staterror, 0 for normsys/histosys, the
        measurement's value for lumi).

        Args:
            templates: The numbers of the spec (see :meth:`templates`).

        Returns:
            Auxiliary data, shape ``(n_aux,)``.
        """
        return self._constraint_numbers(templates)[0]

    def expected_auxdata(self, pars: jax.Array, templates: Templates) -> jax.Array:
        """Expected auxiliary data: the parameter for Gaussian, ``gamma * tau`` for Poisson."""
        pars = _f64(pars)
        _, _, factor = self._constraint_numbers(templates)
        constrained = pars[self._aux_pars]
        return jnp.where(self._aux_is_normal, constrained, constrained * factor)

    def expected_data(
        self, pars: jax.Array, templates: Templates, include_auxdata: bool = True
    ) -> jax.Array:
        """Expected data, like ``pyhf.Model.expected_data``.

        Args:
            pars: Parameter values, shape ``(n_pars,)``.
            templates: The numbers of the spec (see :meth:`templates`).
            include_auxdata: Append the expected auxiliary data.

        Returns:
            Shape ``(n_bins + n_aux,)``, or ``(n_bins,)`` without auxdata.
        """
        main = self.expected_actualdata(pars, templates)
        if not include_auxdata:
            return main
        return jnp.concatenate([main, self.expected_auxdata(pars, templates)])

    def logpdf(self, pars: jax.Array, data: jax.Array, templates: Templates) -> jax.Array:
        """Log-likelihood, equal to ``pyhf.Model.logpdf(pars, data)[0]``.

        Safe at zero yields: empty bins give finite values and finite gradients with respect
        to ``pars``, ``data`` and ``templates``. The choices that make this so:

        * main Poisson term: ``n * log(where(rate > 0, rate, RATE_FLOOR)) - rate -
          lgamma(n + 1)``. For ``rate > 0`` this is pyhf's ``xlogy``; a bin with zero rate and
          zero data contributes 0 (as in pyhf) with zero gradient; a bin with zero (or negative)
          rate and data ``n > 0`` contributes ``n * log(RATE_FLOOR)`` (about ``-708 n``)
          instead of pyhf's ``-inf``/NaN, with zero gradient with respect to the rate.
        * staterror widths ``sqrt(sum_s unc_s**2) / sum_s nominal_s``: bins whose summed
          nominal is zero contribute no relative error (pyhf's rule); a zero width becomes 1
          (pyhf fixes such parameters). Both via ``jnp.where`` on safe denominators, so no NaN
          gradients leak from the unselected branch.
        * shapesys ``tau = (nominal / unc)**2``: bins with zero nominal or uncertainty get
          ``tau = 1`` (pyhf's rule) through a safe ``jnp.where``.

        normsys factors must stay positive (``log(hi)``, ``log(lo)``), as in pyhf.

        Args:
            pars: Parameter values, shape ``(n_pars,)``, pyhf order.
            data: Main data followed by auxiliary data, shape ``(n_bins + n_aux,)``.
            templates: The numbers of the spec (see :meth:`templates`).

        Returns:
            The log-likelihood, a float64 scalar.
        """
        pars, data = _f64(pars), _f64(data)
        main_data, aux_data = data[: self.n_bins], data[self.n_bins :]
        rates = self.expected_actualdata(pars, templates)
        main = jnp.sum(_poisson_logpdf(main_data, rates))
        return main + self.constraint_logpdf(pars, aux_data, templates)

    def constraint_logpdf(
        self, pars: jax.Array, aux_data: jax.Array, templates: Templates
    ) -> jax.Array:
        """Log of the constraint terms alone (``pyhf.Model.constraint_logpdf``).

        Args:
            pars: Parameter values, shape ``(n_pars,)``.
            aux_data: Auxiliary data, shape ``(n_aux,)``.
            templates: The numbers of the spec (staterror widths and shapesys ``tau``).

        Returns:
            The summed Gaussian and Poisson constraint log densities.
        """
        pars, aux_data = _f64(pars), _f64(aux_data)
        _, sigma, factor = self._constraint_numbers(templates)
        constrained = pars[self._aux_pars]
        result = jnp.zeros((), dtype=jnp.float64)
        if self._normal_aux.size:
            i = self._normal_aux
            result = result + jnp.sum(_normal_logpdf(aux_data[i], constrained[i], sigma[i]))
        if self._poisson_aux.size:
            i = self._poisson_aux
            result = result + jnp.sum(_poisson_logpdf(aux_data[i], constrained[i] * factor[i]))
        return result

    def __repr__(self) -> str:
        return (
            f"Model(channels={self.channels}, samples={self.samples}, "
            f"n_pars={self.n_pars}, poi={self.par_names[self.poi_index] if self.poi_index is not None else None!r})"
        )
