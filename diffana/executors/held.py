"""The compiled engine in memory: events lowered once, held as stacked chunks."""

from __future__ import annotations

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffana import ragged
from diffana.chunks import (
    ChunkLayout,
    HeldChunks,
    block_size,
    capacity_of,
    device_chunk,
    padded_groups,
)
from diffana.executors.chunked import ChunkedExecutor, reverse_step, sum_over
from diffana.executors.setup import Setup
from diffana.exported import persistent
from diffana.stages import (
    CLASSIFIER,
    Kernel,
    by_sample,
    chunk_yields,
    classifier_by_sample,
    jit_cutflow,
    jit_events,
)
from diffana.stats.objective import Objective, loss


def fused_templates(kernel: Kernel, u, params_fixed: dict, stacked: dict) -> tuple:
    """The yields of every template (and a classifier's sums) at ``u``: a ``lax.scan`` over
    the chunks.

    The chunk body is rematerialised (``jax.checkpoint``): the backward pass recomputes each
    chunk's intermediate values (events × bins of the KDE, per-object weights) from the
    chunk instead of keeping every chunk's until the end, so no more than one chunk's
    are held at once. On the reference configuration at 1 M events this costs no time
    (0.53 s per step either way: less memory traffic pays for the recomputation) and
    takes the step's own memory from ~770 MB to ~220 MB.
    """
    params = kernel.space.from_unit(u, params_fixed)

    def body(total, chunk):
        return jax.tree_util.tree_map(jnp.add, total, chunk_yields(kernel, params, chunk)), None

    body = jax.checkpoint(body, prevent_cse=False)  # prevent_cse only slows a scan body

    first = jax.tree_util.tree_map(lambda a: a[0], stacked)
    shapes = jax.eval_shape(lambda p, c: chunk_yields(kernel, p, c), params, first)
    zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, stacked)
    return by_sample(kernel, total), classifier_by_sample(kernel, total.get(CLASSIFIER))


def fused_loss(kernel: Kernel, objective: Objective, u, params_fixed: dict, stacked: dict):
    """The loss as one function: :func:`fused_templates`, then model and inference."""
    return loss(objective, *fused_templates(kernel, u, params_fixed, stacked))


def _fused_step(kernel: Kernel, objective: Objective, u, params_fixed: dict, stacked: dict):
    """``(loss, ∂loss/∂u, ∂loss/∂yields)`` of :func:`fused_loss` (:func:`reverse_step`); the
    last is ``[region][sample] = {"nominal", "sumw2"}``.

    One compiled function per gradient step (the chunk body compiled once)."""
    value, grad, cotangent = reverse_step(
        lambda v: fused_templates(kernel, v, params_fixed, stacked),
        lambda y: loss(objective, *y), u)
    return value, grad, cotangent[0]


jit_fused = persistent(jax.jit(_fused_step, static_argnums=(0, 1)), "fused", (0, 1))


def same_parameters(a: dict, b: dict) -> bool:
    """Whether two parameter trees are bitwise the same: structure, types, dtypes, shapes and
    every bit of every value (``-0.0`` is not ``0.0``)."""
    (la, ta), (lb, tb) = jax.tree_util.tree_flatten(a), jax.tree_util.tree_flatten(b)
    return ta == tb and all(
        type(x) is type(y) and np.asarray(x).dtype == np.asarray(y).dtype
        and np.shape(x) == np.shape(y) and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(la, lb, strict=True))


class HeldExecutor(ChunkedExecutor):
    """Lay the event sets end to end, lower them in chunks and pad those to one shape.

    Every sample and variation goes through the same compiled chunk function, which sorts
    its yields by event set: a chunk may hold the end of one set and the start of the next
    (so small sets cost no padding).
    """

    holds_events = True
    alongside = True

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self._last_step = None  # (u, params_fixed, ∂loss/∂yields) of the last fused step
        sets = setup.sets
        cfg, plan = self.kernel.cfg, self.kernel.plan
        events = ak.concatenate([s.events for s in sets]) if len(sets) > 1 else sets[0].events
        weight = np.concatenate([s.weight for s in sets])
        groups = np.repeat(np.arange(len(sets), dtype=np.int32), [len(s) for s in sets])
        self.set_slices = np.cumsum([0] + [len(s) for s in sets])
        # chunks of equal size, at most chunk_size events, a multiple of the block size
        n_chunks = max(-(-len(weight) // cfg.chunk_size), 1)
        per_chunk = -(-len(weight) // n_chunks)
        size = min(-(-per_chunk // 512) * 512, cfg.chunk_size) if len(weight) else 1
        raw = []
        starts = range(0, max(len(weight), 1), size)
        for a in tqdm(starts, desc="lowering", unit="chunk", disable=not setup.progress,
                      leave=False):
            raw.append(ragged.lower(events[a:a + size], plan, weight[a:a + size]).buffers)
        del events  # the sets laid end to end: a copy, where there are several
        capacity, runs = capacity_of([ragged.axis_sizes(b, plan) for b in raw], size)
        n_chunk = capacity["event"]
        padded = [padded_groups(groups[a:a + size], n_chunk, len(sets)) for a in starts]
        # the most sets (padding included) that one histogram block holds
        slots = max(len(np.unique(b)) for g in padded for b in g.reshape(-1, block_size(n_chunk)))
        layout = ChunkLayout(capacity, runs, slots)
        self.kernel = self.kernel.with_layout(layout)

        def device_chunks():  # each lowered chunk let go once it is on the device
            for i, g in enumerate(padded):
                buffers, raw[i] = raw[i], None
                yield device_chunk(layout, plan, buffers, g, len(sets), setup.device, cfg.name)

        #: the device chunks, stacked (public: tests and benchmarks inspect them)
        self.chunks = HeldChunks(device_chunks(), len(raw))

    @property
    def gradient_mode(self) -> str:
        return "fused" if self.gradient == "auto" else self.gradient

    def map_reduce(self, name: str, args: tuple):
        return sum_over(name, self.kernel, args, self.chunks)

    def loss_and_grad(self, u, params_fixed: dict):
        if self.gradient_mode == "fused":
            value, grad, cotangent = jit_fused(self.kernel, self.objective_spec, u, params_fixed,
                                               self.chunks.stacked)
            self._last_step = (u, params_fixed, cotangent)
            return value, grad
        return super().loss_and_grad(u, params_fixed)

    def loss_gradient_in_yields(self, params: dict) -> dict | None:
        if self.gradient_mode != "fused":
            return super().loss_gradient_in_yields(params)
        space = self.kernel.space
        u = space.to_unit(params)
        # the last step's where it had these inputs (the final cuts are the last good step's,
        # where their unit-box coordinates map back to themselves bit for bit): the same
        # numbers, one step less
        last = self._last_step
        if last is not None and same_parameters((last[0], space.from_unit(last[0], last[1])),
                                                (u, space.from_unit(u, params))):
            return last[2]
        return jit_fused(self.kernel, self.objective_spec, u, params, self.chunks.stacked)[2]

    def event_parts(self, params: dict, hard: bool, part: str | None = None):
        kernel = self.part_kernel(part)
        parts = [jit_events(kernel, params, chunk, hard) for chunk in self.chunks]
        stream = {r: tuple(jnp.concatenate([c[r][i] for c in parts], axis=-1) for i in (0, 1))
                  for r in self.kernel.cfg.regions}
        for g, (a, b) in self._set_ranges():
            yield g, {r: (x[a:b], w[:, a:b]) for r, (x, w) in stream.items()}

    def cutflow_parts(self, params: dict):
        stream = jnp.concatenate([jit_cutflow(self.kernel, params, c) for c in self.chunks],
                                 axis=-1)
        for g, (a, b) in self._set_ranges():
            yield g, stream[..., a:b]

    def _set_ranges(self):
        """Each set's events in the chunks laid end to end: ``(set, (first, stop))``."""
        for g in range(len(self.kernel.groups)):
            yield g, (self.set_slices[g], self.set_slices[g + 1])
