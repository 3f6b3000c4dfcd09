"""Reading histogram files (JSON in the AGC layout, or ROOT) and rebinning to a region's binning.

A JSON file maps ``"<region>_<sample>[_<variation>]"`` to ``{"edges": [...], "contents":
[...]}`` (``contents`` with or without the under/overflow bins; an optional ``"variances"``
of the same length); a ROOT file holds one TH1 per key of the same name (read with uproot).
Rebinning merges bins into a subset of the edges; under/overflow and bins outside the
region's range drop, as cabinetry does when it slices and rebins.

Example:
    >>> import numpy as np
    >>> h = Histogram(np.array([0.0, 10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0]), None)
    >>> rebin(h, [0.0, 20.0, 30.0], "example").values.tolist()
    [3.0, 3.0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from diffana.exceptions import DataError
from diffana.io import similar_names

__all__ = ["Histogram", "read_histograms", "rebin"]


class Histogram(NamedTuple):
    """A 1D histogram without flow bins: ``edges`` (n + 1), ``values`` and ``variances`` (n)."""

    edges: np.ndarray
    values: np.ndarray
    variances: np.ndarray | None


def _fmt_edges(edges: np.ndarray) -> str:
    shown = [f"{e:g}" for e in edges]
    if len(shown) > 7:
        shown = [*shown[:3], "...", *shown[-2:]]
    return f"[{', '.join(shown)}] ({len(edges) - 1} bins)"


def _similar(key: str, keys) -> str:
    close = similar_names(key, set(keys))
    return f"; similar: {close}" if close else ""


def _from_arrays(where: str, edges, contents, variances=None) -> Histogram:
    """A :class:`Histogram` from edges and contents with or without flow bins."""
    try:
        edges = np.asarray(edges, dtype=np.float64)
        contents = np.asarray(contents, dtype=np.float64)
        variances = None if variances is None else np.asarray(variances, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: edges, contents and variances must be lists of numbers"
                        ) from None
    if edges.ndim != 1 or contents.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise DataError(f"{where}: edges must be a strictly increasing list of two or more "
                        "numbers")
    n = len(edges) - 1
    if len(contents) == n + 2:
        flow = slice(1, -1)
    elif len(contents) == n:
        flow = slice(None)
    else:
        raise DataError(f"{where}: {len(contents)} contents for {n} bins "
                        f"(expected {n} bins, or {n + 2} with under/overflow)")
    if variances is not None and variances.shape != contents.shape:
        raise DataError(f"{where}: variances have length {len(variances)}, "
                        f"contents {len(contents)}")
    if not np.all(np.isfinite(contents)):
        raise DataError(f"{where}: contents are not all finite")
    return Histogram(edges, contents[flow], None if variances is None else variances[flow])


def _read_json(path: Path, keys: list[str]) -> dict[str, Histogram]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: "
                        f"{err.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: neither a ROOT file nor JSON text") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a mapping of histogram names to "
                        "{edges, contents}, got " + type(content).__name__)
    out = {}
    for key in keys:
        if key not in content:
            raise DataError(f"{path}: histogram {key!r} not found{_similar(key, content)}")
        entry = content[key]
        if not isinstance(entry, dict) or not {"edges", "contents"} <= set(entry):
            raise DataError(f"{path}: {key}: expected {{edges: [...], contents: [...]}}, "
                            f"got {str(entry)[:60]}")
        out[key] = _from_arrays(f"{path}: {key}", entry["edges"], entry["contents"],
                                entry.get("variances"))
    return out


def _read_root(path: Path, keys: list[str]) -> dict[str, Histogram]:
    import uproot

    try:
        file = uproot.open(path)
    except Exception as err:  # uproot raises many types for a damaged file
        reason = " ".join(str(err).split())
        raise DataError(f"{path}: cannot read as a ROOT file "
                        f"({type(err).__name__}: {reason})") from None
    with file:
        names = file.keys(cycle=False)
        out = {}
        for key in keys:
            if key not in names:
                raise DataError(f"{path}: histogram {key!r} not found{_similar(key, names)}")
            obj = file[key]
            if not (hasattr(obj, "axes") and hasattr(obj, "values")) or len(obj.axes) != 1:
                raise DataError(f"{path}: {key}: expected a 1D histogram (TH1), got "
                                f"{getattr(obj, 'classname', type(obj).__name__)}")
            sumw2 = obj.member("fSumw2", none_if_missing=True) if hasattr(obj, "member") else None
            variances = obj.variances(flow=True) if sumw2 is not None and len(sumw2) else None
            out[key] = _from_arrays(f"{path}: {key}", obj.axis().edges(flow=False),
                                    obj.values(flow=True), variances)
    return out


def read_histograms(path: str | Path, keys: list[str]) -> dict[str, Histogram]:
    """Read the histograms ``keys`` from a JSON or ROOT file (told apart by their content).

    Raises:
        DataError: the file is missing or unreadable, a key is missing, or an entry is not a
            1D histogram.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: histogram file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_root(path, keys) if magic == b"root" else _read_json(path, keys)


def rebin(hist: Histogram, edges: list[float], where: str) -> Histogram:
    """Merge the bins of ``hist`` into ``edges`` (a subset of its edges); outside bins drop.

    Raises:
        DataError: an edge of ``edges`` is not an edge of ``hist``.
    """
    src = hist.edges
    scale = max(1.0, float(np.max(np.abs(src))))
    index = []
    for e in edges:
        hits = np.flatnonzero(np.abs(src - e) <= 1e-9 * scale)
        if hits.size == 0:
            raise DataError(f"{where}: binning edge {e:g} is not an edge of the input histogram "
                            f"{_fmt_edges(src)}; the region's edges must be a subset of them")
        index.append(int(hits[0]))
    pairs = list(zip(index, index[1:], strict=False))

    def merge(x):
        return None if x is None else np.array([x[a:b].sum() for a, b in pairs], dtype=np.float64)

    return Histogram(np.asarray(edges, dtype=np.float64), merge(hist.values), merge(hist.variances))
