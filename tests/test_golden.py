"""The shipped configurations give the numbers recorded in tests/data/golden.json, to 1e-12.

Recorded before the code was restructured (``python tests/golden.py --write``); a change
that alters a number must say so and why, and record the values again. Two cases of the
small configuration run by default; the others (Dask, the awkward engine, every AGC case:
compilation) are ``slow``: ``pytest -m slow``.

Floats agree to 1e-12 relative, not bitwise: how the KDE is evaluated decides which
operations XLA fuses and in which order it sums, which moves the last bits of some numbers
(the AGC's sensitivities by up to 5e-16 when the bin fractions became a product with a
difference matrix, :func:`diffana.histogram._differences`), while physics results are
float64 round-off either way. The same tolerance holds the KDE against its previous
evaluation in ``tests/test_histogram.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import golden
import pytest
from conftest import GIVEN_XLA_FLAGS
from golden import CASES, GOLDEN

RECORDED = json.loads(GOLDEN.read_text())
# in the default run: the in-memory fused and the streamed (per-chunk, forward) paths
FAST = {"ttbar-compiled-fused", "ttbar-streamed-forward"}
RTOL = 1e-12


def _cases():
    for case in CASES:
        marks = () if case in FAST else (pytest.mark.slow,)
        yield pytest.param(case, marks=marks, id=case)


def _differences(a, b, path=""):
    """Where two JSON trees differ (floats beyond ``RTOL`` relative, the rest with ==)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        close = a == b or abs(a - b) <= RTOL * max(abs(a), abs(b))
        return [] if close else [f"{path}: {a!r} != {b!r} (relative {abs(a - b) / abs(b):.1e})"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _values(case: str) -> dict:
    """The case's values from ``tests/golden.py`` in a process of its own, compiled with the
    XLA flags the suite was given (by default none: XLA's defaults, as a run compiles; the
    suite's own processes compile without XLA's backend optimisation, tests/conftest.py,
    which moves the AGC's numbers by up to ~1e-10 relative)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if GIVEN_XLA_FLAGS is not None:
        env["XLA_FLAGS"] = GIVEN_XLA_FLAGS
    out = subprocess.run([sys.executable, golden.__file__, case], env=env, text=True,
                         capture_output=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)[case]


@pytest.mark.parametrize("case", list(_cases()))
def test_golden_values_unchanged(case):
    differences = _differences(_values(case), RECORDED[case])
    assert not differences, f"{len(differences)} values differ, e.g. {differences[:5]}"
