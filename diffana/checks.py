"""Checking events as they are read: the structure the plan expects, and finite values.

Every chunk of raw events passes :func:`check_events` before it is weighted, preselected
and lowered (in memory and when streaming):

- **structure**: each branch of a collection (``Jet_pt``, ``Jet_eta``, ...) has one list
  per event, and all of a collection's branches have the same number of objects in each
  event (one counter, ``nJet``); each event branch (an observable's ``branch``,
  ``genWeight``) has one number per event. A branch written the other way is a
  :class:`~diffana.exceptions.DataError` naming the file, the branch and the entry: read
  as it is, a flat ``Jet_pt`` would be broadcast to every jet of its event without error.
- **NaN and inf** in floating-point branches, by the ``nonfinite`` policy of the
  configuration: ``stop`` (default) raises a DataError naming the file, the branch, the
  count and the first entry; ``drop`` removes each object with a non-finite value in any
  of its collection's branches (from all of them), and each event with a non-finite value
  in an event branch, and reports the counts (:class:`Report`; a warning per chunk, and
  per sample on ``SampleReader.nonfinite``, see :func:`check_chunk` and :func:`summary`).
  Dropped events still count in the normalisation, like events the preselection removes.

Example:
    >>> import awkward as ak, numpy as np
    >>> from diffana.ragged import Plan
    >>> plan = Plan({}, {"jets": {"pt": "Jet_pt"}}, ("MET_pt",))
    >>> events = ak.Array({"Jet_pt": [[40.0, np.nan], [30.0]], "MET_pt": [20.0, np.inf]})
    >>> origin = Origin(["a.root"], "Events", np.zeros(2, int), np.arange(2))
    >>> kept, keep, report = check_events(events, plan, ["Jet_pt", "MET_pt"], "drop", origin)
    >>> kept.tolist(), report.values, report.objects, report.events
    ([{'Jet_pt': [40.0], 'MET_pt': 20.0}], {'Jet_pt': 1, 'MET_pt': 1}, {'Jet': 1}, 1)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np

from diffana.exceptions import DataError

POLICIES = ("stop", "drop")
EVENT_BRANCHES = ("genWeight",)  # read for the normalisation: one number per event


class NonFiniteWarning(UserWarning):
    """NaN or inf values were dropped from the events read (``nonfinite: drop``)."""


@dataclass(frozen=True)
class Origin:
    """Where each event of a chunk comes from: ``files[file_index[i]]``, entry ``entry[i]``."""

    files: Sequence[str | Path]
    tree: str
    file_index: np.ndarray
    entry: np.ndarray

    def file(self, i: int) -> str:
        return str(self.files[int(self.file_index[i])])

    def where(self, branch: str, i: int) -> str:
        """``file: branch 'X' of tree 'T'`` for event ``i``."""
        return f"{self.file(i)}: branch {branch!r} of tree {self.tree!r}"

    def subset(self, mask: np.ndarray) -> Origin:
        return Origin(self.files, self.tree, self.file_index[mask], self.entry[mask])


@dataclass
class Report:
    """What :func:`check_events` found in one chunk.

    ``values``: NaN/inf values per branch; ``objects``: objects dropped per collection
    (named by its branch prefix, ``Jet``); ``events``: events dropped.
    """

    values: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    events: int = 0


@dataclass(frozen=True)
class Group:
    """Jagged branches that share one counter: one collection's fields."""

    name: str
    branches: tuple[str, ...]


def groups(the_plan, branches: Sequence[str]) -> tuple[list[Group], list[str]]:
    """The collections' branches, grouped by the counter they share (root collections that
    read a branch in common are one group), and the branches read one per event."""
    sets: list[set[str]] = []
    for fields in the_plan.root_branches.values():
        members = set(fields.values())
        for other in [s for s in sets if s & members]:
            members |= other
            sets.remove(other)
        sets.append(members)
    out = []
    for members in sets:
        ordered = tuple(b for b in dict.fromkeys(the_plan.branches) if b in members)
        prefixes = {b.partition("_")[0] for b in ordered}
        out.append(Group(prefixes.pop() if len(prefixes) == 1 else "+".join(ordered), ordered))
    jagged = {b for g in out for b in g.branches}
    flat = [b for b in dict.fromkeys([*the_plan.event_branches, *EVENT_BRANCHES])
            if b in branches and b not in jagged]
    return out, flat


def _counter(g: Group, sep: str = ", one counter: ") -> str:
    """The NanoAOD counter of a collection's branches (``nJet``), where they share a prefix."""
    return f"{sep}n{g.name}" if "+" not in g.name else ""


def _type(array) -> str:
    return str(ak.type(array).content)


def _leaf(array) -> str:
    """What a branch holds in the end: a NumPy type (``float32``, ``bool``), ``string``, or
    the type where it is neither (records, unions)."""
    t = ak.type(array).content
    while t.parameters.get("__array__") not in ("string", "bytestring"):
        if isinstance(t, ak.types.NumpyType):
            return t.primitive
        if not hasattr(t, "content"):
            return str(t)
        t = t.content
    return "string"


def _flags(the_plan) -> set[str]:
    """Branches an ``equals`` cut compares (flags such as ``Muon_tightId`` may be booleans)."""
    return {the_plan.root_branches[c.root][cut.field] for c in the_plan.collections.values()
            for cut in c.hard_cuts if cut.equals is not None}


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _and_others(origin: Origin, i: int) -> str:
    others = len(np.unique(origin.file_index)) - 1
    if others <= 0:
        return ""
    return f" (and in the {others} other file{'s' if others > 1 else ''} read with it)"


def _check_union(events: ak.Array, origin: Origin, check) -> None:
    """Files whose branches differ in type were read together: check each kind on its own,
    then name the branch whose type differs."""
    layout = ak.to_layout(events)
    tags, index = np.asarray(layout.tags), np.asarray(layout.index)
    parts = []
    for t, content in enumerate(layout.contents):
        sel = tags == t
        if sel.any():
            part = ak.Array(content)[index[sel]]
            check(part, origin.subset(sel))
            parts.append((part, _first(sel)))
    if len(parts) < 2:
        return
    (a, i), (b, j) = parts[0], parts[1]
    for name in a.fields:
        if name in b.fields and _type(a[name]) != _type(b[name]):
            raise DataError(f"{origin.where(name, j)} is {_type(b[name])} (entry "
                            f"{int(origin.entry[j])}), while {origin.file(i)} has "
                            f"{_type(a[name])}; expected one type in every file of a sample")
    raise DataError(f"{origin.file(j)}: the branches of tree {origin.tree!r} differ in type from "
                    f"{origin.file(i)}'s ({_type(b)} vs {_type(a)}); expected one type per sample")


def check_structure(events: ak.Array, the_plan, branches: Sequence[str], origin: Origin) -> None:
    """Raise a :class:`DataError` where a branch does not have the structure the plan reads:
    one list per event for a collection's branches, with one count per event across them,
    and one number per event for event branches; and where a branch does not hold numbers
    (true/false only for the flags an ``equals`` cut compares)."""
    colls, flat = groups(the_plan, branches)
    flags = _flags(the_plan)

    def check(ev: ak.Array, where: Origin) -> None:
        for g in colls:
            lists = [b for b in g.branches if ev[b].ndim == 2]
            for b in g.branches:
                arr = ev[b]
                if arr.ndim == 1:
                    like = f", like {lists[0]!r}" if lists else ""
                    raise DataError(
                        f"{where.where(b, 0)} has one {_type(arr)} per event"
                        f"{_and_others(where, 0)}; expected one list per event (a jagged branch "
                        f"with a counter{_counter(g, ' such as ')}{like})")
                if arr.ndim > 2:
                    raise DataError(f"{where.where(b, 0)} is {_type(arr)}; expected one list of "
                                    "numbers per event")
            counts = {b: ak.to_numpy(ak.num(ev[b], axis=1)) for b in g.branches}
            first, n_first = g.branches[0], counts[g.branches[0]]
            for b in g.branches[1:]:
                differ = counts[b] != n_first
                if differ.any():
                    i = _first(differ)
                    raise DataError(
                        f"{where.where(b, i)} has {counts[b][i]} values at entry "
                        f"{int(where.entry[i])} where {first!r} has {n_first[i]}; expected one "
                        f"count per event for all {g.name} branches{_counter(g)}")
        for b in flat:
            arr = ev[b]
            if arr.ndim != 1:
                raise DataError(f"{where.where(b, 0)} has a list per event ({_type(arr)})"
                                f"{_and_others(where, 0)}; expected one number per event")
        for b in dict.fromkeys(branches):
            arr, leaf = ev[b], _leaf(ev[b])
            if arr.ndim > 2 or not (leaf.startswith(("int", "uint", "float"))
                                    or leaf == "bool" and b in flags):
                also = " or of true/false" if b in flags else ""
                raise DataError(f"{where.where(b, 0)} is {_type(arr)}{_and_others(where, 0)}; "
                                f"expected numbers (a flat or jagged array of numbers{also})")

    if isinstance(ak.to_layout(events), ak.contents.UnionArray):
        _check_union(events, origin, check)
    else:
        check(events, origin)


def _values(arr: ak.Array) -> np.ndarray | None:
    """The flat floating-point values of a branch (``None``: not floating point)."""
    flat = ak.to_numpy(ak.flatten(arr, axis=None))
    return flat if flat.dtype.kind == "f" else None


def check_events(events: ak.Array, the_plan, branches: Sequence[str], policy: str,
                 origin: Origin) -> tuple[ak.Array, np.ndarray | None, Report]:
    """Check a chunk of raw events (see the module docstring); apply the ``nonfinite`` policy.

    Args:
        events: the branches read, one field per branch.
        the_plan: the reading plan (:func:`diffana.ragged.plan`).
        branches: every branch read (the plan's, ``genWeight``, varied branches).
        policy: ``stop`` or ``drop``.
        origin: the file and entry of each event, for the messages.

    Returns:
        ``(events, keep, report)``: the events without the dropped objects and events,
        the mask of the events kept (``None``: all), and the counts.

    Raises:
        DataError: a branch has the wrong structure, or (``stop``) a NaN or inf value.
    """
    if policy not in POLICIES:
        raise ValueError(f"nonfinite: expected one of {POLICIES}, got {policy!r}")
    report = Report()
    if not len(events):
        return events, None, report
    check_structure(events, the_plan, branches, origin)
    colls, _ = groups(the_plan, branches)
    grouped = {b for g in colls for b in g.branches}
    singles = [Group(b, (b,)) for b in dict.fromkeys(branches)
               if b not in grouped and events[b].ndim == 2]
    n = len(events)
    keep = np.ones(n, dtype=bool)
    columns = {f: events[f] for f in events.fields}
    for g in [*colls, *singles]:
        counts = ak.to_numpy(ak.num(events[g.branches[0]], axis=1))
        finite = None
        for b in g.branches:
            values = _values(events[b])
            if values is None:
                continue
            bad = ~np.isfinite(values)
            if bad.any():
                owner = np.repeat(np.arange(n), counts)
                _found(report, b, bad, owner, values, policy, origin)
                finite = ~bad if finite is None else finite & ~bad
        if finite is not None:
            report.objects[g.name] = int((~finite).sum())
            mask = ak.unflatten(finite, counts)
            for b in g.branches:
                columns[b] = events[b][mask]
            counter = f"n{g.name}"
            if counter in columns and columns[counter].ndim == 1:
                dtype = ak.to_numpy(columns[counter]).dtype
                columns[counter] = ak.to_numpy(ak.num(columns[g.branches[0]], axis=1)).astype(dtype)
    single_names = {g.name for g in singles}
    for b in dict.fromkeys(branches):
        if b in grouped or b in single_names or events[b].ndim != 1:
            continue
        values = _values(events[b])
        if values is None:
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            _found(report, b, bad, np.arange(n), values, policy, origin)
            keep &= ~bad
    if not report.values:
        return events, None, report
    events = ak.zip(columns, depth_limit=1)
    report.events = int((~keep).sum())
    if report.events:
        return events[keep], keep, report
    return events, None, report


def _found(report: Report, branch: str, bad: np.ndarray, owner: np.ndarray, values: np.ndarray,
           policy: str, origin: Origin) -> None:
    """Count the non-finite values of ``branch``; with ``stop``, raise naming the first."""
    report.values[branch] = int(bad.sum())
    if policy == "stop":
        k = _first(bad)
        i = int(owner[k])
        in_file = int((origin.file_index[owner[bad]] == origin.file_index[i]).sum())
        raise DataError(f"{origin.where(branch, i)} has {in_file} NaN/inf values (the first, "
                        f"{values[k]}, at entry {int(origin.entry[i])}); expected finite numbers "
                        "(nonfinite: drop drops the objects or events that have them)")


@dataclass
class NonFinite:
    """The NaN/inf values a sample's reader found, each chunk counted once however often it
    is read (streaming reads the files on every evaluation)."""

    values: dict[str, int] = field(default_factory=dict)  # per branch
    objects: dict[str, int] = field(default_factory=dict)  # dropped, per collection
    events: int = 0  # dropped
    chunks: set = field(default_factory=set, repr=False)

    def add(self, report: Report) -> None:
        for b, k in report.values.items():
            self.values[b] = self.values.get(b, 0) + k
        for c, k in report.objects.items():
            self.objects[c] = self.objects.get(c, 0) + k
        self.events += report.events

    def as_dict(self) -> dict:
        return {"values": dict(self.values), "dropped_objects": dict(self.objects),
                "dropped_events": self.events}


def check_chunk(reader, events: ak.Array, file_index: np.ndarray, entry: np.ndarray):
    """:func:`check_events` for ``SampleReader.sets``: ``(events, file_index, entry)`` kept.

    The counts add up on ``reader.nonfinite`` (:class:`NonFinite`), and the first time a
    chunk's values are dropped a :class:`NonFiniteWarning` says so.
    """
    policy = reader.cfg.nonfinite
    origin = Origin(reader.files, reader.tree, np.asarray(file_index), np.asarray(entry))
    events, keep, report = check_events(events, reader.plan, reader.branches, policy, origin)
    tally = getattr(reader, "nonfinite", None)
    if tally is None:
        tally = reader.nonfinite = NonFinite()
    address = (int(origin.file_index[0]), int(origin.entry[0]), len(origin.entry)) \
        if len(origin.entry) else None
    if report.values and address not in tally.chunks:
        tally.chunks.add(address)
        tally.add(report)
        files = sorted({str(reader.files[i]) for i in np.unique(origin.file_index)})
        values = ", ".join(f"{b}: {k}" for b, k in report.values.items())
        objects = "".join(f", {k} {c} objects" for c, k in report.objects.items())
        warnings.warn(f"sample {reader.name!r} ({', '.join(files)}): dropped NaN/inf values "
                      f"({values}){objects} and {report.events} events (nonfinite: drop)",
                      NonFiniteWarning, stacklevel=2)
    if keep is not None:
        file_index, entry = file_index[keep], entry[keep]
    return events, file_index, entry


def summary(readers) -> dict[str, dict]:
    """``{sample: NonFinite.as_dict()}`` of the readers that dropped NaN/inf values."""
    return {r.name: r.nonfinite.as_dict() for r in readers
            if getattr(r, "nonfinite", None) is not None and r.nonfinite.values}
