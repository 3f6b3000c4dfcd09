"""The reference pipeline's events as NanoAOD-like ROOT files: ``generate: {kind: reference}``.

``benchmarks/reference_pipeline.py`` (the hand-written JAX yardstick) draws its events in
memory with :func:`reference_pipeline.make_events`; this generator writes exactly those
events, split by label into ``signal.root`` and ``background.root`` (``Jet_pt``,
``Jet_eta``, ``Jet_btag``, ``lep_pt`` and the event weight as ``genWeight``), so that
``benchmarks/reference.yaml`` runs the same physics on the same events through diffana.
"""

from __future__ import annotations

import sys
from pathlib import Path

import awkward as ak
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_pipeline import make_events  # noqa: E402

from diffana.generate import register_generator  # noqa: E402
from diffana.io import write_events  # noqa: E402

SAMPLES = {"signal": 1, "background": 0}  # file name: label


def split_events(n_events: int, seed: int = 0) -> dict[str, dict]:
    """The reference events by label: per-event arrays and jagged jets, in their order."""
    ev = make_events(n_events, seed)
    counts = np.bincount(ev["owner"], minlength=n_events)
    jets = ak.unflatten(ak.zip({"pt": ev["pt"], "eta": ev["eta"], "btag": ev["btag"]}), counts)
    out = {}
    for name, label in SAMPLES.items():
        keep = ev["label"] == label
        out[name] = {"Jet": jets[keep], "lep_pt": ev["lep_pt"][keep],
                     "genWeight": ev["weight"][keep]}
    return out


@register_generator("reference")
def reference(out_dir: Path, events: int, seed: int) -> dict[str, Path]:
    """Write ``signal.root`` and ``background.root`` with the reference pipeline's events."""
    return {name: write_events(Path(out_dir) / f"{name}.root", sample)
            for name, sample in split_events(events, seed).items()}
