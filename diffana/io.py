"""Reading events: uproot (TTree or RNTuple) → Awkward arrays, with clear errors.

Example:
    >>> from diffana.io import read_branches
    >>> events = read_branches(["tests/data/nano_tt_v12.root"], "Events", ["Jet_pt", "nJet"])
    >>> len(events)
    200
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from diffana.exceptions import DataError
from diffana.files import replacing


def _one_line(err: Exception) -> str:
    """``Type: message`` on one line (uproot's messages span several)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _check_header(path: Path) -> None:
    """A ROOT file starts with ``root``, its format version and where it ends (``fEND``):
    a file shorter than that was cut off (an interrupted copy or write)."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: cannot be read as a ROOT file (the file is empty, 0 bytes)")
    with path.open("rb") as f:
        head = f.read(20)
    if head[:4] != b"root":
        raise DataError(f"{path}: cannot be read as a ROOT file (it starts with {head[:4]!r}, "
                        "not b'root')")
    if len(head) < 16:
        raise DataError(f"{path}: truncated ROOT file ({size} bytes, shorter than its header)")
    version = int.from_bytes(head[4:8], "big")
    end = int.from_bytes(head[12:20] if version >= 1_000_000 else head[12:16], "big")
    if size < end:
        raise DataError(f"{path}: truncated ROOT file: {size} bytes of the {end} its header "
                        "records (an interrupted copy or write?)")


def _open_events(path: Path, tree: str):
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    _check_header(path)
    try:
        handle = uproot.open(path)
    except Exception as err:  # uproot raises many types for damaged files
        raise DataError(f"{path}: cannot be read as a ROOT file ({_one_line(err)})") from None
    try:
        obj = handle[tree]
    except Exception as err:
        if not isinstance(err, KeyError):  # the key is there, its object damaged
            raise DataError(f"{path}: {tree!r} cannot be read ({_one_line(err)})") from None
        keys = sorted({k.split(";")[0] for k in handle.keys(recursive=False)})
        raise DataError(f"{path}: no tree or RNTuple named {tree!r} "
                        f"(the file has {keys})") from None
    if not hasattr(obj, "arrays"):
        raise DataError(f"{path}: {tree!r} is a {type(obj).__name__}, not a TTree or RNTuple")
    return obj


def _available(obj) -> list[str]:
    return [str(k) for k in obj.keys()]


def similar_names(branch: str, have) -> list[str]:
    """Names that look like ``branch``: close spellings, or the same prefix and kind
    (``Jet_btagCSVV2`` for ``Jet_btagDeepFlavB``; ``4j1b_ttbar_ME_var`` for ``4j1b_ttbar_PS_var``)."""
    close = difflib.get_close_matches(branch, sorted(have), n=4, cutoff=0.6)
    prefix, _, rest = branch.partition("_")
    kin = sorted(k for k in have if rest and k.startswith(f"{prefix}_")
                 and k.partition("_")[2][:4].lower() == rest[:4].lower())
    return list(dict.fromkeys(close + kin))[:8]


def _check_branches(path: Path, obj, branches: Sequence[str]) -> None:
    have = set(_available(obj))
    for b in branches:
        if b not in have:
            similar = similar_names(b, have)
            hint = f"; similar branches: {similar}" if similar else ""
            raise DataError(f"{path}: branch {b!r} not found in {obj.name!r}{hint}")


def check_branches(path: str | Path, tree: str, branches: Sequence[str]) -> None:
    """Open ``path`` and check that ``tree`` has ``branches``, without reading events."""
    path = Path(path)
    _check_branches(path, _open_events(path, tree), list(dict.fromkeys(branches)))


def identity(path: str | Path, tree: str) -> dict:
    """What identifies an input file as read: path, size, modification time, the ROOT file's
    UUID and the entries of ``tree`` (provenance, and how a file changed under a run is found).
    """
    path = Path(path)
    obj = _open_events(path, tree)  # the one-line errors of a missing or damaged file
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "uuid": str(obj.file.uuid), "tree": tree, "entries": int(obj.num_entries)}


def iterate_branches(
    files: Sequence[str | Path],
    tree: str,
    branches: Sequence[str],
    step_size: int = 500_000,
):
    """Yield ``(file_index, first_entry, events)`` chunk by chunk (``step_size`` events),
    file after file, with ``TTree.iterate`` / ``RNTuple.iterate``: memory stays bounded.

    A file whose tree has no entries yields nothing (it is skipped).

    Raises:
        DataError: a file is missing, empty, truncated (shorter than its header records) or
            not a ROOT file; the tree is missing; a branch is missing (the message names the
            file and the branch, and similar branches); or a chunk cannot be read (the
            message names the first branch that fails, and the entries).
    """
    branches = list(dict.fromkeys(branches))
    for index, f in enumerate(files):
        path = Path(f)
        obj = _open_events(path, tree)
        _check_branches(path, obj, branches)
        entry = 0
        chunks = obj.iterate(branches, step_size=step_size, library="ak")
        while True:
            try:
                chunk = next(chunks, None)
            except Exception as err:
                raise _read_error(path, obj, tree, branches, entry, step_size, err) from None
            if chunk is None:
                break
            yield index, entry, chunk
            entry += len(chunk)


def _read_error(path: Path, obj, tree: str, branches: Sequence[str], entry: int, step_size: int,
                err: Exception) -> DataError:
    """The error of a chunk that could not be read, naming the first branch that fails."""
    stop = min(entry + step_size, int(obj.num_entries))
    for b in branches:
        try:
            obj.arrays([b], entry_start=entry, entry_stop=stop, library="ak")
        except Exception as branch_err:
            return DataError(f"{path}: branch {b!r} of {tree!r} cannot be read at entries "
                             f"{entry}-{stop} (damaged file? {_one_line(branch_err)})")
    return DataError(f"{path}: reading {tree!r} at entries {entry}-{stop} failed "
                     f"({_one_line(err)})")


def read_range(path: str | Path, tree: str, branches: Sequence[str], start: int,
               stop: int) -> ak.Array:
    """Entries ``[start, stop)`` of one file (errors as :func:`iterate_branches`)."""
    path = Path(path)
    branches = list(dict.fromkeys(branches))
    obj = _open_events(path, tree)
    _check_branches(path, obj, branches)
    try:
        return obj.arrays(branches, entry_start=start, entry_stop=stop, library="ak")
    except Exception as err:
        raise _read_error(path, obj, tree, branches, start, stop - start, err) from None


def read_branches(
    files: Sequence[str | Path],
    tree: str,
    branches: Sequence[str],
    step_size: int = 500_000,
    progress=None,
) -> ak.Array:
    """Read ``branches`` from every file as one Awkward record array (NumPy backend).

    Reads chunk by chunk (:func:`iterate_branches`), then concatenates.

    Raises:
        DataError: a file is missing or unreadable, the tree is missing, a branch is
            missing, or there are no events at all.
    """
    chunks = []
    for _, _, chunk in iterate_branches(files, tree, branches, step_size):
        chunks.append(chunk)
        if progress is not None:
            progress(len(chunk))
    if not chunks:
        raise no_events(files, tree)
    return ak.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def no_events(files: Sequence[str | Path], tree: str) -> DataError:
    """The error of a sample whose files hold no events at all (``run`` and ``validate``)."""
    return DataError(f"{', '.join(map(str, files))}: no events in {tree!r} (0 entries in "
                     f"{'each file' if len(files) > 1 else 'the file'}); expected at least one")


def sum_of_weights(files: Sequence[str | Path], tree: str, branch: str = "genWeight") -> float:
    """Σ genWeight of all events produced for ``files`` (for ``normalisation: genweight``).

    As in CMS NanoAOD, a file whose events were skimmed keeps the sum over every produced
    event in its ``Runs`` tree (``genEventSumw``); that sum is used where present, otherwise
    ``genWeight`` is summed over the events in the file.
    """
    total = 0.0
    for f in files:
        path = Path(f)
        obj = _open_events(path, tree)
        with uproot.open(path) as handle:
            runs = handle["Runs"] if "Runs" in handle else None
            if runs is not None and "genEventSumw" in runs.keys():
                sumw = float(np.sum(runs["genEventSumw"].array(library="np"), dtype=np.float64))
                if not np.isfinite(sumw):
                    raise DataError(f"{path}: branch 'genEventSumw' of 'Runs' sums to {sumw}; "
                                    "expected a finite number")
                total += sumw
                continue
        _check_branches(path, obj, [branch])
        weights = np.asarray(obj.arrays([branch], library="np")[branch], dtype=np.float64)
        # NaN/inf weights: an error when the events are read (nonfinite: stop), or their
        # events are dropped (nonfinite: drop) and so left out of the sum as well
        total += float(np.sum(weights[np.isfinite(weights)], dtype=np.float64))
    if total == 0.0:
        raise DataError(f"{', '.join(map(str, files))}: {branch} sums to 0 (no events, or weights "
                        f"that cancel); expected a non-zero sum to normalise by")
    return total


def write_events(path: str | Path, events: dict[str, ak.Array | np.ndarray], *, tree: str = "Events",
                 rntuple: bool = False, runs: dict[str, np.ndarray] | None = None,
                 basket: int | None = None) -> Path:
    """Write NanoAOD-style events: jagged collections become ``nX`` + ``X_field`` branches.

    ``events`` maps a collection name to an Awkward record array (jagged, one list per event)
    or a branch name to a flat NumPy array. ``runs`` (e.g. ``{"genEventSumw": ...}``) is
    written as the ``Runs`` tree. ``basket``: events per TTree basket (default: all in one),
    so that a reader can read a chunk without decompressing the whole branch. The file is
    written under a temporary name and renamed, so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name of this writer's own, synced and renamed when written
    with replacing(path) as tmp, uproot.recreate(tmp) as out:
        if rntuple:
            flat = {}
            for name, arr in events.items():
                if isinstance(arr, ak.Array) and arr.fields:
                    for field in arr.fields:
                        flat[f"{name}_{field}"] = arr[field]
                else:
                    flat[name] = arr
            out.mkrntuple(tree, ak.Array(flat))
        else:
            n = len(next(iter(events.values())))
            step = basket or max(n, 1)
            for start in range(0, max(n, 1), step):
                part = {k: v[start:start + step] for k, v in events.items()}
                if start == 0:
                    out.mktree(tree, part)
                else:
                    out[tree].extend(part)
        if runs is not None:
            out.mktree("Runs", runs)
    return path
