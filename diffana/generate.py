"""Synthetic NanoAOD-like events, written as real ROOT files with uproot.

The default analysis needs no network: its events are generated deterministically (seeded)
into a local cache on first use and then read back through :mod:`diffana.io` like any user
file. The ``ttbar_vs_wjets`` generator follows the distributions of the hand-written JAX
reference pipeline (``benchmarks/``): ttbar-like events have more, harder and more often
b-tagged jets and a harder lepton than W+jets-like events.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import awkward as ak
import numpy as np

from diffana import files, locks
from diffana.exceptions import ConfigError
from diffana.io import write_events


def cache_dir() -> Path:
    """Where generated events live: ``$DIFFANA_CACHE`` or ``~/.cache/diffana``."""
    return Path(os.environ.get("DIFFANA_CACHE", Path.home() / ".cache" / "diffana"))


def _jets(rng: np.random.Generator, n_events: int, *, mean_jets: float, pt_scale: float,
          b_fraction: float) -> ak.Array:
    n_jets = rng.poisson(mean_jets, n_events)
    n = int(n_jets.sum())
    pt = 25.0 + rng.exponential(pt_scale, n)
    eta = rng.normal(0.0, 1.6, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    mass = pt * rng.uniform(0.05, 0.2, n)
    btag = np.where(rng.random(n) < b_fraction, rng.beta(5, 1.5, n), rng.beta(1.2, 5, n))
    jet_id = np.where(rng.random(n) < 0.98, 6, 2).astype(np.int32)
    jets = ak.unflatten(
        ak.zip({"pt": pt, "eta": eta, "phi": phi, "mass": mass, "btagCSVV2": btag,
                "jetId": jet_id}),
        n_jets,
    )
    # NanoAOD collections are sorted by decreasing pT.
    return jets[ak.argsort(jets.pt, ascending=False)]


def _muons(rng: np.random.Generator, n_events: int, *, pt_scale: float) -> ak.Array:
    counts = np.ones(n_events, dtype=np.int64)
    return ak.unflatten(
        ak.zip({
            "pt": 20.0 + rng.exponential(pt_scale, n_events),
            "eta": rng.normal(0.0, 1.2, n_events),
            "phi": rng.uniform(-np.pi, np.pi, n_events),
        }),
        counts,
    )


_TTBAR_VS_WJETS = {
    # sample: (fraction of events, mean jets, jet pT scale, b fraction, lepton pT scale)
    "ttbar": (0.2, 5.5, 60.0, 0.35, 45.0),
    "wjets": (0.8, 3.0, 35.0, 0.08, 30.0),
}


def ttbar_vs_wjets(out_dir: Path, events: int, seed: int) -> dict[str, Path]:
    """Write ``ttbar.root`` and ``wjets.root`` (TTree ``Events``) with ``events`` in total."""
    paths = {}
    for index, (sample, (frac, mean_jets, pt_scale, b_frac, lep_scale)) in enumerate(
        _TTBAR_VS_WJETS.items()
    ):
        rng = np.random.default_rng([seed, index])
        n = max(1, round(frac * events))
        paths[sample] = write_events(
            out_dir / f"{sample}.root",
            {
                "Jet": _jets(rng, n, mean_jets=mean_jets, pt_scale=pt_scale, b_fraction=b_frac),
                "Muon": _muons(rng, n, pt_scale=lep_scale),
                "genWeight": np.ones(n),
            },
        )
    return paths


GENERATORS: dict[str, Callable[[Path, int, int], dict[str, Path]]] = {
    "ttbar_vs_wjets": ttbar_vs_wjets,
}


def register_generator(name: str):
    """Register an event generator ``fn(out_dir, events, seed) -> {sample: path}`` by name."""

    def deco(fn):
        GENERATORS[name] = fn
        return fn

    return deco


def generated_dir(kind: str, events: int, seed: int) -> Path:
    """The cache directory of one generated sample set (it may not exist yet)."""
    if kind not in GENERATORS:
        raise ConfigError(f"generate.kind: unknown generator {kind!r} "
                          f"(known: {sorted(GENERATORS)})")
    return cache_dir() / f"{kind}-{events}-seed{seed}"


def _complete(out: Path) -> bool:
    return (out / ".complete").exists()


def _leftovers(out: Path) -> list[Path]:
    """Temporary directories of writers of ``out`` (:func:`diffana.files.temporary_name`)."""
    prefix = files.TEMPORARY_PREFIX
    name = re.compile(rf"{re.escape(prefix)}\d+-[0-9a-f]{{8}}-{re.escape(out.name)}")
    return [p for p in out.parent.glob(f"{prefix}*") if name.fullmatch(p.name)]


def ensure_generated(kind: str, events: int, seed: int, progress=None) -> Path:
    """Generate the events once into the cache and return their directory.

    Safe with any number of processes on one cache: one generates, under the lock
    ``.<dir name>.lock`` (:func:`diffana.locks.exclusive`), into a directory of its own that is
    renamed into place when complete (``.complete`` inside), so the directory is either
    absent or whole; the others say that they wait, then read the finished files. A writer
    that was killed leaves only its temporary directory, which the next writer removes: it
    holds the lock, so every other writer of that directory is dead.
    """
    out = generated_dir(kind, events, seed)
    if _complete(out):
        return out

    def waiting(pid: int | None) -> None:
        if progress:
            progress(f"waiting for {f'process {pid}' if pid else 'another process'} "
                     f"generating {out}")

    with locks.exclusive(out.with_name(f".{out.name}.lock"), waiting) as locked:
        if _complete(out):  # generated while this process waited
            return out
        if locked:
            for stale in _leftovers(out):
                shutil.rmtree(stale, ignore_errors=True)
        if progress:
            progress(f"generating {events} {kind} events into {out} (first use only)")
        tmp = files.temporary_name(out)
        try:
            tmp.mkdir()
            GENERATORS[kind](tmp, events, seed)
            files.write_atomic(tmp / ".complete", "ok\n")
            if locked and out.exists():  # incomplete: written in place by an earlier diffana
                shutil.rmtree(out)
            try:
                os.rename(tmp, out)
            except OSError:  # without locks, another writer may have renamed first
                if not _complete(out):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing left once renamed
    return out
