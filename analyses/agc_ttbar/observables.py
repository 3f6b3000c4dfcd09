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
from diffana.select import first_selected, soft_or


def _trijet_structure(jets: ak.Array, spec) -> dict[str, np.ndarray]:
    """Index arrays of all 3-jet combinations per event, sorted by decreasing trijet pT."""
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
    counts = ak.to_numpy(ak.num(combos))
    base = np.repeat(offsets[:-1], counts)
    event = np.repeat(np.arange(len(jets), dtype=np.int32), counts)
    starts = np.zeros(int(counts.sum()), dtype=bool)
    starts[np.concatenate([[0], np.cumsum(counts)[:-1]])[counts > 0]] = True
    return {
        "i": (ak.to_numpy(ak.flatten(i[order])) + base).astype(np.int32),
        "j": (ak.to_numpy(ak.flatten(j[order])) + base).astype(np.int32),
        "k": (ak.to_numpy(ak.flatten(k[order])) + base).astype(np.int32),
        "mass": ak.to_numpy(ak.flatten(mass[order])).astype(np.float64),
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
