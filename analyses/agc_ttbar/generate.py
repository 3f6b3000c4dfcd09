"""Synthetic AGC-like NanoAOD events: ``diffana generate agc``.

The AGC inputs (CMS 2015 Open Data NanoAOD, terabytes) are out of reach, so this module writes
seeded, NanoAOD-like ROOT files for the AGC samples and the ttbar modelling variations. The
events come from a small parton-level model with a simple detector response:

* **production and decays**: tops and W bosons are given Breit–Wigner masses and decayed with
  isotropic two-body decays, boosted to the lab frame, so a hadronic top's three jets carry its
  mass. W decays follow the PDG branching fractions (τ decays to e, μ or a τ jet).
  ttbar, single top (t, s channel and tW) and W+jets differ in what is produced: see
  ``docs/agc_generator.md``.
* **radiation**: each sample adds extra partons (ISR/FSR) with a falling pT spectrum; some of
  them are c or b quarks (gluon splitting). The jet multiplicity, hence the ≥ 4-jet and b-tag
  category fractions, is set by these parameters.
* **detector**: jets get a pT response and resolution, a jet mass, a CSVv2-like b-tag
  discriminant by flavour (``-10`` where there are no tracks), and a jet ID (``jetId``: 2 tight,
  6 tight + lepton veto; the jets made by isolated leptons fail the lepton veto). Leptons get a
  reconstruction efficiency, an identification (``Electron_cutBased``, ``Muon_tightId``),
  ``sip3d`` and isolation; leptons from b and c decays are added, non-prompt and mostly failing.
  Pile-up jets add soft jets.

The parameters are tuned so that the hard AGC selection reproduces the AGC reference yields
per region and sample (``analyses/agc_ttbar/compare_yields.py`` prints the comparison).
One deliberate difference from the real 2015 files: there, ``Muon_tightId`` is False for every
muon, so only electrons are selected; here both channels work and the lepton identification
efficiencies are set so that electrons plus muons give the reference (electron-only) yields.

Every event of a sample weighs ``σ · L / N_total`` (:func:`event_weight`), with ``N_total`` the
number of events in its file, so the yields do not depend on the event budget.

Example:
    >>> from analyses.agc_ttbar.generate import generate_sample
    >>> events = generate_sample("ttbar", 1000, seed=1)
    >>> sorted(events)
    ['Electron', 'Jet', 'Muon', 'genWeight']
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np

from diffana.generate import register_generator
from diffana.io import write_events

LUMINOSITY = 3378.0  # pb^-1
CROSS_SECTIONS = {  # pb, as in the AGC
    "ttbar": 729.84,
    "single_top_s_chan": 3.2944,
    "single_top_t_chan": 234.79,
    "single_top_tW": 75.842,
    "wjets": 15487.2,
}
for _variation in ("ME_var", "PS_var", "scaleup", "scaledown"):
    CROSS_SECTIONS[f"ttbar_{_variation}"] = CROSS_SECTIONS["ttbar"]

# How the budget of nominal events is shared; W+jets gets the most because so few of its
# events pass the selection. Each ttbar variation gets half of the nominal ttbar events.
NOMINAL_SHARE = {
    "ttbar": 0.30,
    "single_top_s_chan": 0.04,
    "single_top_t_chan": 0.10,
    "single_top_tW": 0.08,
    "wjets": 0.48,
}
VARIATION_SHARE = 0.5
# Samples written skimmed: SKIM[s] times their share of events are produced, and only those
# that can pass the selection for any cuts within the bounds of configs/agc_ttbar.yaml are
# kept (see :func:`skim`). Their ``Runs`` tree holds ``genEventSumw``, the number produced,
# as CMS NanoAOD does, and the configuration normalises them with ``normalisation: genweight``.
SKIM = {"wjets": 10, "single_top_t_chan": 4, "single_top_s_chan": 8}
SKIM_PT_MIN = 25.0  # GeV: the lower bound of lepton_pt_min and jet_pt_min
SKIM_BATCH = 250_000
SAMPLES = (*NOMINAL_SHARE, "ttbar_ME_var", "ttbar_PS_var", "ttbar_scaleup", "ttbar_scaledown")

TOP_MASS, TOP_WIDTH = 172.5, 1.4
W_MASS, W_WIDTH = 80.4, 2.1
# W → (hadrons, e ν, μ ν, τ ν); τ → (e, μ, hadrons)
W_BRANCHING = np.array([0.6760, 0.1071, 0.1063, 0.1106])
TAU_BRANCHING = np.array([0.1782, 0.1739, 0.6479])

# particle kinds in the parton list
LIGHT, CHARM, BOTTOM, ELECTRON, MUON, TAU_JET = 1, 4, 5, 11, 13, 15

# Detector: lepton identification efficiencies (for prompt leptons in acceptance), b-tag
# efficiencies at CSVv2 > 0.5 per jet flavour.
ELECTRON_TIGHT_EFF = 0.215
MUON_TIGHT_EFF = 0.24
BTAG_EFF = {BOTTOM: 0.815, CHARM: 0.30, LIGHT: 0.075, TAU_JET: 0.05}


@dataclass(frozen=True)
class SampleModel:
    """The parameters of one sample (see ``docs/agc_generator.md``).

    Attributes:
        radiation_mean: mean number of extra (ISR/FSR) partons per event.
        radiation_pt_min: their pT spectrum is a power law from this value (GeV) ...
        radiation_pt_index: ... with this index (larger: softer).
        heavy_flavour: probability that an extra parton is a b quark (c: twice that).
        mass_scale: scale (GeV) of the tail of the produced system's mass above threshold.
        jet_response: mean jet pT response (reco / parton); b jets get 0.97 of it.
        btag_scale: multiplies the b-jet tagging efficiency (b fragmentation).
        fsr: probability that a quark or gluon radiates a resolved gluon.
        spectator_b: probability of an extra, mostly soft and forward b quark.
    """

    radiation_mean: float
    radiation_pt_min: float = 16.0
    radiation_pt_index: float = 1.4
    heavy_flavour: float = 0.02
    mass_scale: float = 110.0
    jet_response: float = 1.0
    btag_scale: float = 1.0
    fsr: float = 0.2
    spectator_b: float = 0.0


WJETS_PARTON_RATIO = 0.39  # P(n + 1 partons) / P(n partons) in W+jets

MODELS = {
    "ttbar": SampleModel(radiation_mean=2.8, radiation_pt_index=1.5, mass_scale=90.0),
    "single_top_s_chan": SampleModel(radiation_mean=0.55, mass_scale=60.0),
    "single_top_t_chan": SampleModel(radiation_mean=0.9, heavy_flavour=0.12, spectator_b=1.0),
    "single_top_tW": SampleModel(radiation_mean=1.7, mass_scale=80.0, heavy_flavour=0.09,
                                 spectator_b=1.0),
    "wjets": SampleModel(radiation_mean=0.0, radiation_pt_min=20.0, radiation_pt_index=1.5,
                         heavy_flavour=0.09),
}
MODELS["ttbar_ME_var"] = dataclasses.replace(MODELS["ttbar"], radiation_mean=3.8,
                                             mass_scale=125.0, btag_scale=0.97)
MODELS["ttbar_PS_var"] = dataclasses.replace(MODELS["ttbar"], radiation_mean=3.0, fsr=0.3,
                                             jet_response=0.98, btag_scale=0.96)
MODELS["ttbar_scaleup"] = dataclasses.replace(MODELS["ttbar"], radiation_mean=3.0,
                                              heavy_flavour=0.035)
MODELS["ttbar_scaledown"] = dataclasses.replace(MODELS["ttbar"], radiation_mean=2.35,
                                                heavy_flavour=0.012, jet_response=0.99)


def event_weight(sample: str, n_total: int) -> float:
    """The AGC normalisation of one event: ``σ · L / N_total``."""
    return CROSS_SECTIONS[sample] * LUMINOSITY / n_total


def sample_sizes(events: int) -> dict[str, int]:
    """Events per file for a budget of ``events`` nominal events."""
    sizes = {s: max(1, round(frac * events)) for s, frac in NOMINAL_SHARE.items()}
    for sample in SAMPLES[len(NOMINAL_SHARE):]:
        sizes[sample] = max(1, round(VARIATION_SHARE * sizes["ttbar"]))
    return sizes


# -- kinematics (float64 four-vectors as (n, 4) arrays: E, px, py, pz) -----------------------


def _four_vector(pt, eta, phi, mass) -> np.ndarray:
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.stack([np.sqrt(px**2 + py**2 + pz**2 + mass**2), px, py, pz], axis=1)


def _pt_eta_phi(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pt = np.hypot(p4[:, 1], p4[:, 2])
    eta = np.arcsinh(p4[:, 3] / np.maximum(pt, 1e-9))
    return pt, eta, np.arctan2(p4[:, 2], p4[:, 1])


def _system(mass, pt, phi, rapidity) -> np.ndarray:
    """Four-vector of a system of given mass, transverse momentum and rapidity."""
    mt = np.sqrt(mass**2 + pt**2)
    return np.stack([mt * np.cosh(rapidity), pt * np.cos(phi), pt * np.sin(phi),
                     mt * np.sinh(rapidity)], axis=1)


def _boost(p4: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Lorentz boost of ``p4`` by velocity ``beta`` (n, 3)."""
    b2 = np.maximum(np.sum(beta**2, axis=1), 1e-18)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(beta * p4[:, 1:], axis=1)
    coef = (gamma - 1.0) * bp / b2 + gamma * p4[:, 0]
    return np.column_stack([gamma * (p4[:, 0] + bp), p4[:, 1:] + coef[:, None] * beta])


def _decay(rng, parent: np.ndarray, m1, m2) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic two-body decay of ``parent`` into masses ``m1``, ``m2`` (lab frame)."""
    n = len(parent)
    mass = np.sqrt(np.maximum(parent[:, 0] ** 2 - np.sum(parent[:, 1:] ** 2, axis=1), 0.0))
    m1 = np.broadcast_to(m1, (n,))
    m2 = np.broadcast_to(m2, (n,))
    p = np.sqrt(np.maximum((mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2), 0.0)) / (
        2.0 * mass)
    cos = rng.uniform(-1.0, 1.0, n)
    sin = np.sqrt(1.0 - cos**2)
    phi = rng.uniform(-np.pi, np.pi, n)
    direction = np.column_stack([sin * np.cos(phi), sin * np.sin(phi), cos])
    d1 = np.column_stack([np.sqrt(p**2 + m1**2), p[:, None] * direction])
    d2 = np.column_stack([np.sqrt(p**2 + m2**2), -p[:, None] * direction])
    beta = parent[:, 1:] / parent[:, :1]
    return _boost(d1, beta), _boost(d2, beta)


def _breit_wigner(rng, n, mass, width, window) -> np.ndarray:
    return np.clip(mass + 0.5 * width * np.tan(np.pi * (rng.random(n) - 0.5)),
                   mass - window, mass + window)


class _Partons:
    """Final-state objects of the parton-level model, flat, with their event index."""

    def __init__(self) -> None:
        self.event: list[np.ndarray] = []
        self.p4: list[np.ndarray] = []
        self.kind: list[np.ndarray] = []

    def add(self, event, p4, kind) -> None:
        keep = np.broadcast_to(kind, (len(event),)) > 0  # kind 0: invisible (neutrinos)
        self.event.append(event[keep])
        self.p4.append(p4[keep])
        self.kind.append(np.broadcast_to(kind, (len(event),))[keep].astype(np.int32))

    def arrays(self):
        return np.concatenate(self.event), np.concatenate(self.p4), np.concatenate(self.kind)


def _decay_w(rng, parts: _Partons, event, w, leptonic_only: bool = False) -> None:
    """W → q q' (a c quark in half of them), e ν, μ ν or τ ν (τ → e, μ or a τ jet)."""
    n = len(event)
    branching = W_BRANCHING if not leptonic_only else np.r_[0.0, W_BRANCHING[1:]]
    mode = rng.choice(4, size=n, p=branching / branching.sum())
    d1, d2 = _decay(rng, w, 0.0, 0.0)
    hadronic = mode == 0
    charm = rng.random(n) < 0.5
    parts.add(event[hadronic], d1[hadronic], np.where(charm[hadronic], CHARM, LIGHT))
    parts.add(event[hadronic], d2[hadronic], LIGHT)
    lep = ~hadronic
    kind = np.choose(mode[lep] - 1, [ELECTRON, MUON, 0])
    tau = mode[lep] == 3
    if tau.any():
        tau_mode = rng.choice(3, size=int(tau.sum()), p=TAU_BRANCHING)
        kind[tau] = np.choose(tau_mode, [ELECTRON, MUON, TAU_JET])
    visible = np.where(tau, rng.beta(2.5, 2.0, lep.sum()), 1.0)  # τ: neutrinos take the rest
    parts.add(event[lep], d1[lep] * visible[:, None], kind)


def _decay_top(rng, parts: _Partons, event, top, leptonic_only: bool = False) -> None:
    """t → b W, then the W decay."""
    n = len(event)
    b, w = _decay(rng, top, 0.0, _breit_wigner(rng, n, W_MASS, W_WIDTH, 10.0))
    parts.add(event, b, BOTTOM)
    _decay_w(rng, parts, event, w, leptonic_only)


def _spectator_b(rng, parts: _Partons, n_events: int, probability: float) -> None:
    """A b quark left over from the incoming gluon splitting: soft, often forward."""
    event = np.flatnonzero(rng.random(n_events) < probability)
    m = len(event)
    p4 = _four_vector(5.0 + rng.exponential(30.0, m), np.clip(rng.normal(0.0, 2.0, m), -4.7, 4.7),
                      rng.uniform(-np.pi, np.pi, m), 0.0)
    parts.add(event, p4, BOTTOM)


def _final_state_radiation(rng, event, p4, kind, probability: float):
    """A quark or gluon gives a fraction z of its momentum to a gluon at an angle ~ 0.5."""
    coloured = (kind == LIGHT) | (kind == CHARM) | (kind == BOTTOM)
    split = np.flatnonzero(coloured & (rng.random(len(kind)) < probability))
    m = len(split)
    z = rng.uniform(0.05, 0.4, m)
    pt, eta, phi = _pt_eta_phi(p4[split])
    angle = 0.3 + rng.exponential(0.4, m)
    direction = rng.uniform(-np.pi, np.pi, m)
    gluon = _four_vector(z * pt, eta + angle * np.cos(direction), phi + angle * np.sin(direction),
                         0.0)
    p4 = p4.copy()
    p4[split] *= (1.0 - z)[:, None]
    return (np.concatenate([event, event[split]]), np.concatenate([p4, gluon]),
            np.concatenate([kind, np.full(m, LIGHT, np.int32)]))


def _radiation(rng, parts: _Partons, n_events: int, model: SampleModel, counts=None):
    """Extra partons; returns their summed transverse momentum (px, py) per event."""
    if counts is None:
        counts = rng.poisson(model.radiation_mean, n_events)
    event = np.repeat(np.arange(n_events), counts)
    m = len(event)
    pt = model.radiation_pt_min * rng.random(m) ** (-1.0 / model.radiation_pt_index)
    pt = np.minimum(pt, 1500.0)
    eta = np.clip(rng.normal(0.0, 1.9, m), -4.7, 4.7)
    phi = rng.uniform(-np.pi, np.pi, m)
    u = rng.random(m)
    kind = np.where(u < model.heavy_flavour, BOTTOM,
                    np.where(u < 3 * model.heavy_flavour, CHARM, LIGHT))
    p4 = _four_vector(pt, eta, phi, 0.0)
    parts.add(event, p4, kind)
    return (np.bincount(event, p4[:, 1], n_events), np.bincount(event, p4[:, 2], n_events))


def _recoil(rng, px, py, n):
    """Transverse momentum and azimuth balancing the radiation (plus an intrinsic kT)."""
    px = -px + rng.normal(0.0, 8.0, n)
    py = -py + rng.normal(0.0, 8.0, n)
    return np.hypot(px, py), np.arctan2(py, px)


def _ttbar(rng, n: int, model: SampleModel) -> _Partons:
    parts = _Partons()
    event = np.arange(n)
    rpx, rpy = _radiation(rng, parts, n, model)
    pt, phi = _recoil(rng, rpx, rpy, n)
    mass = 2 * TOP_MASS + 10.0 + rng.gamma(1.4, model.mass_scale, n)
    system = _system(mass, pt, phi, rng.normal(0.0, 0.9, n))
    t1, t2 = _decay(rng, system, _breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 8.0),
                    _breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 8.0))
    _decay_top(rng, parts, event, t1)
    _decay_top(rng, parts, event, t2)
    return parts


def _single_top_s(rng, n: int, model: SampleModel) -> _Partons:
    """s channel: t b̄, the top decaying leptonically (the AGC sample is ``leptonDecays``)."""
    parts = _Partons()
    event = np.arange(n)
    rpx, rpy = _radiation(rng, parts, n, model)
    pt, phi = _recoil(rng, rpx, rpy, n)
    mass = TOP_MASS + 20.0 + rng.gamma(1.5, model.mass_scale, n)
    system = _system(mass, pt, phi, rng.normal(0.0, 0.8, n))
    top, b = _decay(rng, system, _breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 8.0), 0.0)
    parts.add(event, b, BOTTOM)
    _decay_top(rng, parts, event, top, leptonic_only=True)
    return parts


def _single_top_t(rng, n: int, model: SampleModel) -> _Partons:
    """t channel (4 flavours, inclusive decays): top + forward light quark + spectator b̄."""
    parts = _Partons()
    event = np.arange(n)
    _radiation(rng, parts, n, model)
    top_pt = rng.gamma(2.0, 30.0, n)
    top_phi = rng.uniform(-np.pi, np.pi, n)
    mt = _breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 8.0)
    top = _system(mt, top_pt, top_phi, rng.normal(0.0, 1.0, n))
    side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    light_eta = np.clip(side * np.abs(rng.normal(2.3, 1.1, n)), -4.7, 4.7)
    light = _four_vector(top_pt * rng.uniform(0.5, 1.2, n) + 10.0, light_eta,
                         top_phi + np.pi + rng.normal(0.0, 0.6, n), 0.0)
    parts.add(event, light, LIGHT)
    _spectator_b(rng, parts, n, model.spectator_b)
    _decay_top(rng, parts, event, top)
    return parts


def _single_top_tw(rng, n: int, model: SampleModel) -> _Partons:
    """tW (inclusive decays): a top and a W, like ttbar with one b quark fewer."""
    parts = _Partons()
    event = np.arange(n)
    rpx, rpy = _radiation(rng, parts, n, model)
    pt, phi = _recoil(rng, rpx, rpy, n)
    mass = TOP_MASS + W_MASS + 15.0 + rng.gamma(1.4, model.mass_scale, n)
    system = _system(mass, pt, phi, rng.normal(0.0, 0.9, n))
    top, w = _decay(rng, system, _breit_wigner(rng, n, TOP_MASS, TOP_WIDTH, 8.0),
                    _breit_wigner(rng, n, W_MASS, W_WIDTH, 10.0))
    _spectator_b(rng, parts, n, model.spectator_b)
    _decay_top(rng, parts, event, top)
    _decay_w(rng, parts, event, w)
    return parts


def _wjets(rng, n: int, model: SampleModel) -> _Partons:
    """W(→ ℓν) + jets: a steeply falling number of partons (Berends scaling), some b or c."""
    parts = _Partons()
    event = np.arange(n)
    counts = rng.geometric(1.0 - WJETS_PARTON_RATIO, n) - 1
    rpx, rpy = _radiation(rng, parts, n, model, counts)
    pt, phi = _recoil(rng, rpx, rpy, n)
    w = _system(_breit_wigner(rng, n, W_MASS, W_WIDTH, 10.0), pt, phi, rng.normal(0.0, 1.5, n))
    _decay_w(rng, parts, event, w, leptonic_only=True)
    return parts


PROCESSES = {
    "ttbar": _ttbar,
    "single_top_s_chan": _single_top_s,
    "single_top_t_chan": _single_top_t,
    "single_top_tW": _single_top_tw,
    "wjets": _wjets,
}


# -- detector --------------------------------------------------------------------------------


def _btag(rng, kind, eff_scale: float) -> np.ndarray:
    """CSVv2-like discriminant: a Kumaraswamy density per flavour with P(> 0.5) = efficiency
    (b jets pile up near 1, light jets near 0)."""
    out = np.empty(len(kind))
    for flavour, shape_a in ((BOTTOM, 1.3), (CHARM, 0.9), (LIGHT, 0.6), (TAU_JET, 0.6)):
        sel = kind == flavour
        eff = min(BTAG_EFF[flavour] * (eff_scale if flavour == BOTTOM else 1.0), 0.999)
        shape_b = np.log(eff) / np.log1p(-(0.5**shape_a))
        u = rng.random(int(sel.sum()))
        out[sel] = (1.0 - (1.0 - u) ** (1.0 / shape_b)) ** (1.0 / shape_a)
    return out


def _collection(event, n_events: int, fields: dict[str, np.ndarray]) -> ak.Array:
    """A jagged record array, sorted by event and then by decreasing pT."""
    # one integer sort key: event, then decreasing pT (positive float32 bits sort like values)
    pt_bits = np.asarray(fields["pt"], np.float32).view(np.uint32).astype(np.int64)
    order = np.argsort((event.astype(np.int64) << 32) | (0xFFFFFFFF - pt_bits))
    counts = np.bincount(event, minlength=n_events)
    return ak.unflatten(ak.zip({k: v[order] for k, v in fields.items()}), counts)


def _leptons(rng, event, pt, eta, phi, kind, n_events: int):
    """Electrons and muons: prompt ones (reconstruction and identification efficiencies) and
    non-prompt ones from b and c decays (soft, displaced, not isolated)."""
    n = len(kind)
    reco_e = (kind == ELECTRON) & (np.abs(eta) < 2.5) & (pt > 5.0) & (rng.random(n) < 0.95)
    reco_m = (kind == MUON) & (np.abs(eta) < 2.4) & (pt > 3.0) & (rng.random(n) < 0.98)
    heavy = np.flatnonzero(((kind == BOTTOM) | (kind == CHARM))
                           & (rng.random(n) < np.where(kind == BOTTOM, 0.22, 0.12)))
    m = len(heavy)
    np_pt = pt[heavy] * rng.beta(1.3, 6.0, m)
    np_eta = eta[heavy] + rng.normal(0.0, 0.05, m)
    np_phi = phi[heavy] + rng.normal(0.0, 0.05, m)
    np_is_e = rng.random(m) < 0.5

    def merged(prompt, nonprompt, resolution):
        n_p = int(prompt.sum())
        return {
            "event": np.concatenate([event[prompt], event[heavy][nonprompt]]),
            "pt": np.concatenate([pt[prompt] * rng.normal(1.0, resolution, n_p),
                                  np_pt[nonprompt]]),
            "eta": np.concatenate([eta[prompt], np_eta[nonprompt]]),
            "phi": np.concatenate([phi[prompt], np_phi[nonprompt]]),
            "prompt": np.r_[np.ones(n_p, bool), np.zeros(int(nonprompt.sum()), bool)],
        }

    ele = merged(reco_e, np_is_e & (np.abs(np_eta) < 2.5) & (np_pt > 5.0), 0.02)
    mu = merged(reco_m, ~np_is_e & (np.abs(np_eta) < 2.4) & (np_pt > 3.0), 0.015)

    f32 = np.float32
    n_e, prompt_e = len(ele["pt"]), ele["prompt"]
    tight = rng.random(n_e) < np.where(prompt_e, ELECTRON_TIGHT_EFF, 0.05)
    cut_based = np.where(tight, 4, rng.choice(4, n_e, p=[0.4, 0.2, 0.2, 0.2]))
    electrons = _collection(ele["event"], n_events, {
        "pt": ele["pt"].astype(f32),
        "eta": ele["eta"].astype(f32),
        "phi": ele["phi"].astype(f32),
        "mass": np.full(n_e, 0.000511, f32),
        "cutBased": cut_based.astype(np.int32),
        "sip3d": np.where(prompt_e, rng.exponential(1.0, n_e),
                          rng.exponential(8.0, n_e)).astype(f32),
    })
    n_m, prompt_m = len(mu["pt"]), mu["prompt"]
    muons = _collection(mu["event"], n_events, {
        "pt": mu["pt"].astype(f32),
        "eta": mu["eta"].astype(f32),
        "phi": mu["phi"].astype(f32),
        "mass": np.full(n_m, 0.10566, f32),
        "tightId": rng.random(n_m) < np.where(prompt_m, MUON_TIGHT_EFF, 0.5),
        "sip3d": np.where(prompt_m, rng.exponential(1.0, n_m),
                          rng.exponential(8.0, n_m)).astype(f32),
        "pfRelIso04_all": np.where(prompt_m, rng.exponential(0.03, n_m),
                                   0.05 + rng.exponential(0.6, n_m)).astype(f32),
    })
    prompt = {k: np.concatenate([ele[k][prompt_e], mu[k][prompt_m]])
              for k in ("event", "pt", "eta", "phi")}
    return electrons, muons, prompt


def _jets(rng, event, pt, eta, phi, kind, prompt_leptons, n_events: int,
          model: SampleModel) -> ak.Array:
    """Jets from quarks, gluons and τ jets (response, resolution, b-tag, jet ID); isolated
    leptons also make jets, which fail the lepton veto of the jet ID; pile-up adds soft jets."""
    hadronic = (kind != ELECTRON) & (kind != MUON)
    event, pt, eta, phi, kind = (x[hadronic] for x in (event, pt, eta, phi, kind))
    n_q = len(pt)
    response = model.jet_response * np.where(kind == BOTTOM, 0.97, 1.0)
    sigma = np.sqrt(1.0 / np.maximum(pt, 1.0) + 0.05**2)  # stochastic ⊕ constant term
    reco_pt = pt * np.maximum(rng.normal(response, sigma), 0.05)

    lep = prompt_leptons
    n_l = len(lep["pt"])
    pu_event = np.repeat(np.arange(n_events), rng.poisson(1.5, n_events))
    n_pu = len(pu_event)

    jet = {
        "event": np.concatenate([event, lep["event"], pu_event]),
        "pt": np.concatenate([reco_pt, lep["pt"] * rng.normal(1.0, 0.05, n_l),
                              15.0 + rng.exponential(6.0, n_pu)]),
        "eta": np.concatenate([eta + rng.normal(0.0, 0.02, n_q), lep["eta"],
                               rng.uniform(-4.7, 4.7, n_pu)]),
        "phi": np.concatenate([phi + rng.normal(0.0, 0.02, n_q), lep["phi"],
                               rng.uniform(-np.pi, np.pi, n_pu)]),
        "kind": np.concatenate([kind, np.full(n_l, LIGHT), np.full(n_pu, LIGHT)]),
        "jetId": np.concatenate([rng.choice([6, 2, 0], n_q, p=[0.97, 0.02, 0.01]),
                                 np.where(rng.random(n_l) < 0.97, 2, 6),
                                 rng.choice([6, 2, 0], n_pu, p=[0.6, 0.1, 0.3])]),
    }
    keep = (jet["pt"] > 15.0) & (np.abs(jet["eta"]) < 4.7)
    jet = {k: v[keep] for k, v in jet.items()}
    n_j = len(jet["pt"])
    btag = _btag(rng, jet["kind"], model.btag_scale)
    # no tracks: outside the tracker, or (for some soft jets) too few
    no_tracks = (np.abs(jet["eta"]) > 2.4) | (
        rng.random(n_j) < 0.5 * np.exp(-(jet["pt"] - 15.0) / 8.0))
    btag[no_tracks] = -10.0
    f32 = np.float32
    return _collection(jet["event"], n_events, {
        "pt": jet["pt"].astype(f32),
        "eta": jet["eta"].astype(f32),
        "phi": ((jet["phi"] + np.pi) % (2 * np.pi) - np.pi).astype(f32),
        "mass": (jet["pt"] * np.clip(rng.normal(0.13, 0.05, n_j), 0.02, 0.4)).astype(f32),
        "btagCSVV2": btag.astype(f32),
        "jetId": jet["jetId"].astype(np.int32),
    })


def _detector(rng, parts: _Partons, n_events: int, model: SampleModel) -> dict:
    """Reconstructed events from the parton-level ones (after final-state radiation)."""
    event, p4, kind = _final_state_radiation(rng, *parts.arrays(), model.fsr)
    pt, eta, phi = _pt_eta_phi(p4)
    electrons, muons, prompt = _leptons(rng, event, pt, eta, phi, kind, n_events)
    jets = _jets(rng, event, pt, eta, phi, kind, prompt, n_events, model)
    return {"Jet": jets, "Electron": electrons, "Muon": muons,
            "genWeight": np.ones(n_events, np.float32)}


def generate_sample(sample: str, n_events: int, seed: int,
                    batch: int = 0) -> dict[str, ak.Array | np.ndarray]:
    """The events of one sample, in memory (collections and ``genWeight``), reproducible."""
    if sample not in MODELS:
        raise ValueError(f"unknown AGC sample {sample!r} (known: {list(MODELS)})")
    rng = np.random.default_rng([seed, SAMPLES.index(sample)] + ([batch] if batch else []))
    model = MODELS[sample]
    process = PROCESSES[sample.split("_", 1)[0] if sample.startswith("ttbar") else sample]
    return _detector(rng, process(rng, n_events, model), n_events, model)


def skim(events: dict) -> np.ndarray:
    """Events with >= 1 lepton and >= 4 jets at the loosest cuts the AGC configuration allows.

    Lepton: pT > 25 GeV, |η| < 2.1 (electron or muon, before identification); jet: pT > 25
    GeV, |η| < 2.4, tight lepton veto ID. An event failing this fails the AGC selection for
    every cut value within the configured bounds, so skimming does not change any result.
    """
    def n(coll, eta_max, extra=True):
        return ak.to_numpy(ak.sum((coll.pt > SKIM_PT_MIN) & (abs(coll.eta) < eta_max) & extra,
                                  axis=1))

    jets = events["Jet"]
    leptons = n(events["Electron"], 2.1) + n(events["Muon"], 2.1)
    return (leptons >= 1) & (n(jets, 2.4, (jets.jetId & 4) == 4) >= 4)


def _skimmed_sample(sample: str, n_events: int, seed: int) -> tuple[dict, float]:
    """Produce ``n_events`` in batches; keep those passing :func:`skim`. Returns (events, N)."""
    kept = []
    for batch, start in enumerate(range(0, n_events, SKIM_BATCH)):
        n = min(SKIM_BATCH, n_events - start)
        events = generate_sample(sample, n, seed, batch)
        kept.append({k: v[skim(events)] for k, v in events.items()})
    merged = {k: ak.concatenate([b[k] for b in kept]) for k in kept[0]}
    merged["genWeight"] = ak.to_numpy(merged["genWeight"])
    return merged, float(n_events)


@register_generator("agc")
def agc(out_dir: Path, events: int, seed: int) -> dict[str, Path]:
    """Write one NanoAOD-like file per AGC sample and ttbar variation (TTree ``Events``).

    ``events`` is the budget of nominal events, shared as ``NOMINAL_SHARE``; each ttbar
    variation gets half as many events as nominal ttbar. The samples in ``SKIM`` are
    produced ``SKIM[s]`` times over and skimmed (their ``Runs`` tree counts all produced).
    The samples are made in threads, the largest first (each has its own random stream, so
    the events do not depend on the order; NumPy, Awkward and the compression release the
    GIL for most of the time: 4.5 -> 2.7 s at 200 k events on 2 cores).
    """
    out_dir = Path(out_dir)
    sizes = sample_sizes(events)

    def write(sample: str) -> Path:
        path, n = out_dir / f"{sample}.root", sizes[sample]
        if sample not in SKIM:
            return write_events(path, generate_sample(sample, n, seed))
        kept, produced = _skimmed_sample(sample, n * SKIM[sample], seed)
        return write_events(path, kept, runs={"genEventSumw": np.array([produced]),
                                              "genEventCount": np.array([produced])})

    largest_first = sorted(sizes, key=lambda s: -sizes[s] * SKIM.get(s, 1))
    with ThreadPoolExecutor(min(len(sizes), os.cpu_count() or 1)) as pool:
        paths = dict(zip(largest_first, pool.map(write, largest_first), strict=True))
    return {sample: paths[sample] for sample in sizes}
