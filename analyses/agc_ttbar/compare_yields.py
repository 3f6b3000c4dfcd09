"""Compare the hard AGC selection on generated events with the AGC reference yields.

    python analyses/agc_ttbar/compare_yields.py --events 300000 [--seed 0]

generates the AGC samples (``diffana generate agc``) into a temporary directory, reads them
back, applies the AGC selection with plain Awkward (no diffana stages), and prints per region
and sample: the reference yield and the generated yield in the fit range 110–550 GeV, their
ratio, and the peak bin of each (bin centre, GeV, flow bins excluded). The reference
is ``tests/data/agc/histos_5_file_per_process.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import awkward as ak
import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from analyses.agc_ttbar.generate import SAMPLES, agc, event_weight  # noqa: E402
from diffana.io import read_branches, sum_of_weights  # noqa: E402

REFERENCE = REPO / "tests" / "data" / "agc" / "histos_5_file_per_process.json"
EDGES = np.linspace(50.0, 550.0, 26)
FIT_LOW = 110.0
REGIONS = ("4j1b", "4j2b")
BRANCHES = [
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2", "Jet_jetId",
    "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
]


def agc_selection(events: ak.Array) -> dict[str, np.ndarray]:
    """The AGC hard selection on NanoAOD branches; the observable per event, NaN if not in the
    region: ``{"4j1b": H_T, "4j2b": m_bjj}``."""
    e_ok = ((events.Electron_pt > 30) & (abs(events.Electron_eta) < 2.1)
            & (events.Electron_cutBased == 4) & (events.Electron_sip3d < 4))
    m_ok = ((events.Muon_pt > 30) & (abs(events.Muon_eta) < 2.1) & events.Muon_tightId
            & (events.Muon_sip3d < 4) & (events.Muon_pfRelIso04_all < 0.15))
    j_ok = ((events.Jet_pt > 30) & (abs(events.Jet_eta) < 2.4) & ((events.Jet_jetId & 4) == 4))
    jets = ak.zip({"pt": events.Jet_pt[j_ok], "eta": events.Jet_eta[j_ok],
                   "phi": events.Jet_phi[j_ok], "mass": events.Jet_mass[j_ok],
                   "btag": events.Jet_btagCSVV2[j_ok]})
    n_lep = ak.sum(e_ok, axis=1) + ak.sum(m_ok, axis=1)
    n_b = ak.sum(jets.btag > 0.5, axis=1)
    base = (n_lep == 1) & (ak.num(jets) >= 4)
    out = {}
    ht = ak.to_numpy(ak.sum(jets.pt, axis=1)).astype(np.float64)
    out["4j1b"] = np.where(ak.to_numpy(base & (n_b == 1)), ht, np.nan)

    sel = ak.to_numpy(base & (n_b >= 2))
    j = jets[sel]
    px, py = j.pt * np.cos(j.phi), j.pt * np.sin(j.phi)
    pz = j.pt * np.sinh(j.eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + j.mass**2)
    p4 = ak.zip({"e": e, "px": px, "py": py, "pz": pz, "b": j.btag > 0.5})
    a, b, c = ak.unzip(ak.combinations(p4, 3, axis=1))
    tri = {k: a[k] + b[k] + c[k] for k in ("e", "px", "py", "pz")}
    tri_pt = np.sqrt(tri["px"] ** 2 + tri["py"] ** 2)
    has_b = a.b | b.b | c.b
    best = ak.argmax(ak.where(has_b, tri_pt, -1.0), axis=1, keepdims=True)
    m2 = tri["e"] ** 2 - tri["px"] ** 2 - tri["py"] ** 2 - tri["pz"] ** 2
    mbjj = np.sqrt(np.maximum(ak.to_numpy(ak.firsts(m2[best])).astype(np.float64), 0.0))
    out["4j2b"] = np.full(len(events), np.nan)
    out["4j2b"][sel] = mbjj
    return out


def histogram(values: np.ndarray, weight: float) -> np.ndarray:
    """The AGC binning with flow bins (27 entries, as in the reference JSON)."""
    v = values[~np.isnan(values)]
    inner, _ = np.histogram(v, bins=EDGES)
    counts = np.r_[np.sum(v < EDGES[0]), inner, np.sum(v >= EDGES[-1])]
    return counts * weight


def fit_yield(contents) -> float:
    """Sum over the fit range 110–550 GeV (flow bins excluded)."""
    first = 1 + int(np.searchsorted(EDGES, FIT_LOW))
    return float(np.sum(np.asarray(contents)[first:-1]))


def peak(contents) -> float:
    """Centre (GeV) of the fullest bin between 50 and 550 GeV (flow bins excluded)."""
    i = int(np.argmax(np.asarray(contents)[1:-1]))
    return 0.5 * (EDGES[i] + EDGES[i + 1])


def generated_histograms(directory: Path) -> dict[str, dict[str, tuple[np.ndarray, int]]]:
    """``{region: {sample: (histogram, selected events)}}`` for the files ``agc`` wrote."""
    out: dict[str, dict[str, tuple[np.ndarray, int]]] = {r: {} for r in REGIONS}
    for sample in SAMPLES:
        path = directory / f"{sample}.root"
        events = read_branches([path], "Events", BRANCHES)
        # every generated event has genWeight 1: the sum counts all produced (skims included)
        weight = event_weight(sample, sum_of_weights([path], "Events"))
        for region, values in agc_selection(events).items():
            out[region][sample] = (histogram(values, weight), int(np.sum(~np.isnan(values))))
    return out


def table(generated: dict[str, dict[str, tuple[np.ndarray, int]]], reference: dict) -> list[dict]:
    """One row per region and sample: yields in the fit range, their ratio, peak positions."""
    rows = []
    for region in REGIONS:
        for sample, (hist, selected) in generated[region].items():
            ref = reference[f"{region}_{sample}"]["contents"]
            ref_yield, gen_yield = fit_yield(ref), fit_yield(hist)
            rows.append({"region": region, "sample": sample, "reference": ref_yield,
                         "generated": gen_yield, "ratio": gen_yield / ref_yield,
                         "selected": selected, "peak_reference": peak(ref),
                         "peak_generated": peak(hist)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000, help="nominal event budget")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    reference = json.loads(REFERENCE.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        agc(Path(tmp), args.events, args.seed)
        seconds = time.perf_counter() - start
        generated = generated_histograms(Path(tmp))
    print(f"generated {args.events} nominal events (+ ttbar variations), seed {args.seed}, "
          f"in {seconds:.1f} s\n")
    print("| region | sample | reference yield | generated yield | ratio | selected events "
          "| peak ref. (GeV) | peak gen. (GeV) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in table(generated, reference):
        print(f"| {row['region']} | {row['sample']} | {row['reference']:.1f} | "
              f"{row['generated']:.1f} | {row['ratio']:.2f} | {row['selected']} | "
              f"{row['peak_reference']:.0f} | {row['peak_generated']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
