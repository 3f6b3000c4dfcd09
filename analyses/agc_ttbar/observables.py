"""AGC observables: m_bjj, the mass of the trijet with the largest pT among those with a b-tag.

The AGC 4j2b observable: of all 3-jet combinations of selected jets with at least one
b-tagged jet, take the one with the largest trijet pT; its invariant mass. The combinations,
their four-momenta and their pT order are structure (computed once when the events are
lowered). Which candidate is chosen depends on the soft selection, so the choice is a soft
argmax: candidate ``c`` (in decreasing trijet pT) weighs
``p_c = s_c · Π_{c' before c}(1 - s_c')`` with ``s_c`` its soft selection
(jets selected AND at least one b-tagged), and ``m_bjj = Σ p_c m_c``. With hard cuts ``p_c``
is 1 for exactly the AGC's candidate.

A configuration imports this module (``imports: [../analyses/agc_ttbar/observables.py]``) and
uses ``{kind: trijet_mass, collection: jets, options: {btag_collection: bjets}}``.
"""

from __future__ import annotations

import awkward as ak
import jax
import numpy as np

from diffana.observe import register_observable
from diffana.soft import first_selected, soft_or


def _dominated(weakest: ak.Array, btag: ak.Array, levels: np.ndarray) -> ak.Array:
    """Candidates (in preference order) that an earlier one beats at every cut value.

    Candidate ``c'`` before ``c`` with a weakest jet at least as hard and a best b-tag at
    least as high is selected whenever ``c`` is (pT above a threshold, b-tag above a
    threshold), so ``c`` is never the first selected candidate: with hard cuts, at any
    thresholds, dropping it changes nothing. ``levels``: each event's jet b-tag values,
    ``(events, most jets)``, NaN-padded.
    """
    counts = ak.to_numpy(ak.num(weakest))
    # the weakest jet pT as its rank among all values: integers, so the event offsets below
    # are exact (float offsets rounded near-ties differently from one chunk to the next)
    _, w = np.unique(ak.to_numpy(ak.flatten(weakest)).astype(np.float64), return_inverse=True)
    b = ak.to_numpy(ak.flatten(btag)).astype(np.float64)
    event = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    first = np.zeros(len(w), dtype=bool)
    first[(np.cumsum(counts) - counts)[counts > 0]] = True
    # a segmented running maximum: events offset so that no maximum crosses an event
    offset = event * (int(w.max(initial=0)) + 1)
    dominated = np.zeros(len(w), dtype=bool)
    for q in range(levels.shape[1]):  # each b-tag value of the event's jets
        level = levels[event, q]
        at_least = np.where(b >= level, w + offset, -1)
        before = np.maximum.accumulate(np.concatenate([[-1], at_least[:-1]]))
        before[first] = -1  # nothing comes before an event's first candidate
        here = b == level
        dominated[here] |= before[here] - offset[here] >= w[here]
    return ak.unflatten(dominated, counts)


def _trijet_structure(jets: ak.Array, spec) -> dict[str, np.ndarray]:
    """Index arrays of the 3-jet combinations per event, sorted by decreasing trijet pT.

    With ``options.prune: true`` the candidates that can never be chosen with hard cuts are
    dropped (:func:`_dominated`; valid when the jets' only soft cut is pT above a threshold
    and the b-tag collection's is ``options.btag_field`` above a threshold).
    """
    offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(jets)))])
    combos = ak.argcombinations(jets, 3, axis=1)
    i, j, k = (combos[f] for f in ("0", "1", "2"))
    pt, eta, phi, m = (ak.values_astype(jets[f], np.float64) for f in ("pt", "eta", "phi", "mass"))
    px = pt * np.cos(phi)
    py = pt * np.sin(phi)
    pz = pt * np.sinh(eta)
    energy = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    tri = {name: comp[i] + comp[j] + comp[k]
           for name, comp in (("px", px), ("py", py), ("pz", pz), ("e", energy))}
    pt = np.sqrt(tri["px"] ** 2 + tri["py"] ** 2)
    mass = np.sqrt(np.maximum(tri["e"] ** 2 - tri["px"] ** 2 - tri["py"] ** 2 - tri["pz"] ** 2, 0))
    order = ak.argsort(pt, axis=1, ascending=False, stable=True)
    if spec.options.get("prune", False):
        field = spec.options.get("btag_field", "btag")
        weakest = np.minimum(np.minimum(jets.pt[i], jets.pt[j]), jets.pt[k])[order]
        btag = np.maximum(np.maximum(jets[field][i], jets[field][j]), jets[field][k])[order]
        most = max(int(ak.to_numpy(ak.num(jets)).max(initial=0)), 1)  # also with no event
        levels = ak.to_numpy(ak.fill_none(ak.pad_none(
            ak.values_astype(jets[field], np.float64), most, clip=True), np.nan))
        order = order[~_dominated(weakest, btag, levels)]
    counts = ak.to_numpy(ak.num(order))
    base = np.repeat(offsets[:-1], counts)
    i, j, k, mass = i[order], j[order], k[order], mass[order]
    event = np.repeat(np.arange(len(jets), dtype=np.int32), counts)
    starts = np.zeros(int(counts.sum()), dtype=bool)
    starts[np.concatenate([[0], np.cumsum(counts)[:-1]])[counts > 0]] = True
    return {
        "i": (ak.to_numpy(ak.flatten(i)) + base).astype(np.int32),
        "j": (ak.to_numpy(ak.flatten(j)) + base).astype(np.int32),
        "k": (ak.to_numpy(ak.flatten(k)) + base).astype(np.int32),
        "mass": ak.to_numpy(ak.flatten(mass)).astype(np.float64),
        "event": event,
        "starts": starts,
    }


@register_observable("trijet_mass", requires=("collection", "options.btag_collection"),
                     fields=("pt", "eta", "phi", "mass"), prepare=_trijet_structure)
def trijet_mass(ops, spec, weights, plan):
    """Soft m_bjj (see the module docstring)."""
    root = plan.collections[spec.collection].root
    s = ops.prepared(spec.options["name"])
    w = ops.flat(root, weights[spec.collection])
    b = ops.flat(root, weights[spec.options["btag_collection"]])
    i, j, k = s["i"], s["j"], s["k"]
    selected = w[i] * w[j] * w[k] * soft_or([b[i], b[j], b[k]])
    p = first_selected(selected, s["starts"], ops.prepared_max_run(spec.options["name"]))
    return jax.ops.segment_sum(p * s["mass"], s["event"], num_segments=ops.n_events,
                               indices_are_sorted=True)
