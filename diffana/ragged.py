"""Lowering ragged events: structure once with Awkward, weights differentiable with JAX.

A soft cut never removes an object, so which objects exist, which event owns each, and in
what order they come do not depend on the cut parameters. :func:`lower` computes that
structure once per sample with Awkward (NumPy backend) — hard cuts (fixed thresholds,
ID flags) are applied here by removing objects — and keeps the rest as flat buffers.

The two engines see the same lowered events through an ``ops`` object with a tiny API:

- ``ops.field(root, name)``: per-object values of a collection's field,
- ``ops.ones(root)``, ``ops.mask(collection)``: constant per-object weights,
- ``ops.sum(root, values)``: per-event sums (a segment sum, or ``ak.sum(axis=1)``),
- ``ops.first(root, values, default)``: the first object's value per event,
- ``ops.event_branch(name)``: a flat per-event branch,
- ``ops.flat(root, values)``: per-object values as one flat JAX array (all events),
- ``ops.starts(root)``: flat flags marking each event's first object,
- ``ops.sum_flat(root, values)``: per-event sums of flat per-object values,
- ``ops.prepared(name)``: the structure an observable computed once when lowering,
- ``ops.max_run(root)``/``ops.prepared_max_run(name)``: the most objects (rows) of one
  event, a static bound for segmented scans (``None`` where unknown),
- ``ops.sigmoid``/``ops.step``/``ops.abs``: element-wise functions on per-object arrays.

Per-event results are plain JAX arrays in both engines.

:class:`CompiledOps` works on flat buffers and is traced by ``jax.jit``;
:class:`AwkwardOps` works on JAX-backed Awkward arrays and is differentiated eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np

from diffana import observe
from diffana.config import ObjectCut
from diffana.plan import Plan


def _hard_mask(values: ak.Array, cut: ObjectCut) -> ak.Array:
    x = abs(values) if cut.abs else values
    if cut.above is not None:
        return x > cut.above
    if cut.below is not None:
        return x < cut.below
    if cut.equals is not None:
        return x == cut.equals
    return (x & cut.bits_set) == cut.bits_set


@dataclass
class Lowered:
    """One sample's events after lowering.

    ``jagged`` keeps, per root collection, the hard-cut Awkward record array (NumPy backend):
    the awkward engine and the plain boolean-mask cross-checks start from it. ``buffers`` is
    the pytree the compiled engine traces: per root collection the flat field columns, the
    owning event of each object, the index of each event's first object and its count; the
    constant masks of hard cuts on subsets; the event branches and the normalisation weight.
    """

    n_events: int
    jagged: dict[str, ak.Array]
    event_columns: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]  # subset collection -> flat 0/1 mask over root objects
    weight: np.ndarray
    buffers: dict = field(default_factory=dict)


def _structure(events: ak.Array, the_plan: Plan) -> tuple[dict, dict]:
    """Hard-cut root collections, and the hard masks of subsets (jagged booleans)."""
    jagged: dict[str, ak.Array] = {}
    for root, fields in the_plan.root_branches.items():
        coll = ak.zip({f: events[b] for f, b in fields.items()}, depth_limit=None)
        for cut in the_plan.collections[root].hard_cuts:
            coll = coll[_hard_mask(coll[cut.field], cut)]
        jagged[root] = coll
    masks: dict[str, ak.Array] = {}
    for name, cp in the_plan.collections.items():
        if cp.parent is None:
            continue
        mask = masks.get(cp.parent)
        if mask is None:
            mask = ak.ones_like(jagged[cp.root][jagged[cp.root].fields[0]], dtype=bool)
        for cut in cp.hard_cuts:
            mask = mask & _hard_mask(jagged[cp.root][cut.field], cut)
        if cp.hard_cuts or cp.parent in masks:
            masks[name] = mask
    return jagged, masks


def structural_keep(events: ak.Array, the_plan: Plan, requirements) -> np.ndarray:
    """Events that can pass the count requirements at all, whatever the soft cuts.

    Soft cuts only lower object weights, so an event with fewer hard-selected objects than
    ``at_least``/``exactly`` asks can only reach a soft weight below ``sigmoid(-1/(2t))``
    for that requirement. ``preselect: true`` drops such events when lowering: their hard
    weight is 0 for every parameter value, and their soft weight is at most that bound.
    """
    jagged, masks = _structure(events, the_plan)
    counts = {}
    for name, cp in the_plan.collections.items():
        counts[name] = (ak.to_numpy(ak.sum(masks[name], axis=1)) if name in masks
                        else ak.to_numpy(ak.num(jagged[cp.root])))

    def possible(req) -> np.ndarray:
        if req.count is not None:
            need = req.at_least if req.at_least is not None else req.exactly
            return counts[req.count] >= need
        if req.all is not None:
            return np.logical_and.reduce([possible(r) for r in req.all])
        if req.any is not None:
            return np.logical_or.reduce([possible(r) for r in req.any])
        return np.ones(len(events), dtype=bool)

    keep = np.ones(len(events), dtype=bool)
    for req in requirements:
        keep &= possible(req)
    return keep


def lower(events: ak.Array, the_plan: Plan, weight: np.ndarray) -> Lowered:
    """Apply hard cuts and flatten: the part of the analysis that no parameter changes."""
    n = len(events)
    jagged, jagged_masks = _structure(events, the_plan)
    masks = {name: ak.to_numpy(ak.flatten(m)).astype(np.float64) for name, m in jagged_masks.items()}
    event_columns = {b: ak.to_numpy(events[b]).astype(np.float64) for b in the_plan.event_branches}

    buffers: dict = {"collections": {}, "masks": {}, "events": {}, "weight": None}
    for root, coll in jagged.items():
        counts = ak.to_numpy(ak.num(coll)).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        buffers["collections"][root] = {
            "fields": {f: np.asarray(ak.to_numpy(ak.flatten(coll[f])), dtype=np.float64)
                       for f in coll.fields},
            "owner": np.repeat(np.arange(n, dtype=np.int32), counts),
            "first": np.minimum(offsets[:-1], max(int(offsets[-1]) - 1, 0)).astype(np.int32),
            "count": counts.astype(np.int32),
            "starts": np.isin(np.arange(int(offsets[-1])), offsets[:-1]),
        }
    buffers["prepared"] = {
        name: {k: np.asarray(v) for k, v in observe.KINDS[obs.kind].prepare(
            jagged[the_plan.collections[obs.collection].root], obs).items()}
        for name, obs in the_plan.prepared
    }
    buffers["masks"] = dict(masks)
    buffers["events"] = dict(event_columns)
    buffers["weight"] = np.asarray(weight, dtype=np.float64)
    return Lowered(n, jagged, event_columns, masks, np.asarray(weight, np.float64), buffers)


def _axes(buffers: dict, the_plan: Plan) -> dict:
    """The axis of every buffer array: ``"event"``, ``("objects", root)`` or ``("prepared", name)``.

    Arrays on one axis have the same length; padding a chunk pads each axis to a capacity.
    """
    axes: dict = {"collections": {}, "masks": {}, "prepared": {},
                  "events": {b: "event" for b in buffers["events"]}, "weight": "event"}
    for root, c in buffers["collections"].items():
        obj = ("objects", root)
        axes["collections"][root] = {"fields": {f: obj for f in c["fields"]}, "owner": obj,
                                     "starts": obj, "first": "event", "count": "event"}
    for name in buffers["masks"]:
        axes["masks"][name] = ("objects", the_plan.collections[name].root)
    for name, prep in buffers["prepared"].items():
        axes["prepared"][name] = {k: ("prepared", name) for k in prep}
    return axes


def max_run(starts: np.ndarray) -> int:
    """The longest run of entries from one ``starts`` flag to the next: most objects per event."""
    edges = np.concatenate([np.flatnonzero(starts), [len(starts)]])
    return int(max(np.diff(edges).max(initial=1), edges[0] if len(edges) else 1, 1))


def axis_sizes(buffers: dict, the_plan: Plan) -> dict:
    """The length of each axis of a lowered chunk's buffers (see :func:`pad`), and under
    ``("run", axis)`` the most objects (rows) of one event on the axes that have ``starts``."""
    sizes: dict = {}

    def record(path, a, axis):
        sizes.setdefault(axis, len(a))
        if getattr(path[-1], "key", None) == "starts":
            sizes[("run", axis)] = max_run(np.asarray(a))

    jax.tree_util.tree_map_with_path(record, buffers, _axes(buffers, the_plan))
    return sizes


def pad(buffers: dict, the_plan: Plan, capacity: dict) -> dict:
    """Pad a lowered chunk's buffers to fixed axis lengths, so one compiled function serves all.

    Padding events have weight 0 and no objects. Padding objects (and prepared rows) belong
    to the event index ``capacity["event"]``, which segment sums drop, and each starts an
    event of its own, so scans over objects never carry into them. Prepared structures
    (``observe.register_observable(prepare=...)``) follow the same convention: a key
    ``event`` holds the owning event of each row, ``starts`` marks each event's first row.
    """
    n_events = capacity["event"]

    def pad_one(path, a, axis):
        extra = capacity[axis] - len(a)
        key = path[-1].key if hasattr(path[-1], "key") else None
        if key in ("owner", "event"):
            value = n_events
        elif key == "starts":
            value = True
        else:
            value = 0
        return np.concatenate([a, np.full(extra, value, dtype=a.dtype)]) if extra else a

    return jax.tree_util.tree_map_with_path(pad_one, buffers, _axes(buffers, the_plan))


def to_device(buffers: dict, device=None) -> dict:
    """The compiled engine's buffers as JAX arrays (float64 values, int32 indices), on
    ``device`` (default: JAX's default device)."""
    if device is not None:
        return jax.device_put(buffers, device)
    return jax.tree_util.tree_map(jnp.asarray, buffers)


class CompiledOps:
    """Ragged operations on flat buffers: traced by ``jax.jit``, runs on any JAX device."""

    def __init__(self, buffers: dict, n_events: int, runs: dict | None = None):
        self.buffers = buffers
        self.n_events = n_events
        self.runs = runs or {}  # ("run", axis) -> most objects of one event (static)

    def max_run(self, root: str) -> int | None:
        """The most objects of ``root`` in one event, if known (bounds segmented scans)."""
        return self.runs.get(("run", ("objects", root)))

    def prepared_max_run(self, name: str) -> int | None:
        """The most rows of prepared structure ``name`` in one event, if known."""
        return self.runs.get(("run", ("prepared", name)))

    def field(self, root: str, name: str):
        return self.buffers["collections"][root]["fields"][name]

    def ones(self, root: str):
        return jnp.ones_like(self.buffers["collections"][root]["owner"], dtype=jnp.float64)

    def mask(self, root: str, collection: str):
        return self.buffers["masks"].get(collection)

    def sum(self, root: str, values):
        owner = self.buffers["collections"][root]["owner"]
        return jax.ops.segment_sum(values, owner, num_segments=self.n_events,
                                   indices_are_sorted=True)

    def first(self, root: str, values, default: float = 0.0):
        c = self.buffers["collections"][root]
        if values.shape[0] == 0:
            return jnp.full(self.n_events, default, dtype=jnp.float64)
        return jnp.where(c["count"] > 0, values[c["first"]], default)

    def event_branch(self, name: str):
        return self.buffers["events"][name]

    def flat(self, root: str, values):
        return values

    def starts(self, root: str):
        return self.buffers["collections"][root]["starts"]

    def segments(self, root: str) -> tuple:
        """``(owner, first, count)``: each object's event, each event's first object and
        number of objects (:func:`diffana.soft.nth_selected_dense`)."""
        c = self.buffers["collections"][root]
        return c["owner"], c["first"], c["count"]

    def sum_flat(self, root: str, values):
        return self.sum(root, values)

    def prepared(self, name: str) -> dict:
        return self.buffers["prepared"][name]

    @staticmethod
    def sigmoid(x):
        return jax.nn.sigmoid(x)

    @staticmethod
    def step(x):
        return (x > 0).astype(jnp.float64)

    @staticmethod
    def abs(x):
        return jnp.abs(x)


_AWKWARD_JAX_READY = False


def enable_awkward_jax() -> None:
    """Register Awkward's JAX backend (the ``awkward`` engine only).

    Since Awkward 2.10 this pins JAX to the CPU for the whole process, which is why the
    compiled engine never calls it.
    """
    global _AWKWARD_JAX_READY
    if not _AWKWARD_JAX_READY:
        ak.jax.register_and_check()
        _AWKWARD_JAX_READY = True


class AwkwardOps:
    """The same operations on JAX-backed Awkward arrays (eager; ``jax.grad`` through Awkward)."""

    def __init__(self, lowered: Lowered):
        enable_awkward_jax()
        self.lowered = lowered
        self.n_events = lowered.n_events
        self._jagged = {r: ak.to_backend(c, "jax") for r, c in lowered.jagged.items()}

    def field(self, root: str, name: str):
        return self._jagged[root][name]

    def max_run(self, root: str) -> int:
        return max_run(self.lowered.buffers["collections"][root]["starts"])

    def prepared_max_run(self, name: str) -> int:
        return max_run(self.lowered.buffers["prepared"][name]["starts"])

    def ones(self, root: str):
        return ak.ones_like(self._jagged[root][self._jagged[root].fields[0]], dtype=np.float64)

    def mask(self, root: str, collection: str):
        flat = self.lowered.masks.get(collection)
        if flat is None:
            return None
        return ak.to_backend(ak.unflatten(flat, ak.num(self.lowered.jagged[root])), "jax")

    def sum(self, root: str, values):
        return ak.to_jax(ak.sum(values, axis=1))

    def first(self, root: str, values, default: float = 0.0):
        return ak.to_jax(ak.fill_none(ak.firsts(values, axis=1), default))

    def event_branch(self, name: str):
        return jnp.asarray(self.lowered.event_columns[name])

    def flat(self, root: str, values):
        return ak.to_jax(ak.flatten(values, axis=1))

    def starts(self, root: str):
        return jnp.asarray(self.lowered.buffers["collections"][root]["starts"])

    def sum_flat(self, root: str, values):
        owner = jnp.asarray(self.lowered.buffers["collections"][root]["owner"])
        return jax.ops.segment_sum(values, owner, num_segments=self.n_events,
                                   indices_are_sorted=True)

    def prepared(self, name: str) -> dict:
        return {k: jnp.asarray(v) for k, v in self.lowered.buffers["prepared"][name].items()}

    @staticmethod
    def sigmoid(x):
        # Written with tanh, which Awkward dispatches to JAX, and stable for large |x|.
        return 0.5 * (1.0 + np.tanh(0.5 * x))

    @staticmethod
    def step(x):
        return ak.values_astype(x > 0, np.float64)

    @staticmethod
    def abs(x):
        return abs(x)
