"""Soft operations: cuts give weights in (0, 1), never remove anything.

Soft logic (each with its hard twin, the limit temperature → 0):

- a cut ``x > c`` weighs with ``sigmoid((x - c) / t)`` (hard: ``x > c``),
- AND is a product, OR is ``1 - Π(1 - w)``,
- a soft count is a sum of object weights,
- "at least n" is ``sigmoid((count - n + 1/2) / t)``, "exactly n" is the product of
  "at least n" and "at most n".

Example:
    >>> import jax.numpy as jnp
    >>> from diffana.soft import soft_above
    >>> float(soft_above(jnp.array(31.0), 30.0, 1.0))  # doctest: +ELLIPSIS
    0.731...
    >>> float(soft_above(jnp.array(31.0), 30.0, 1.0, hard=True))
    1.0
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp


def _sigmoid_or_step(x, hard: bool, ops=None):
    if ops is not None:
        return ops.step(x) if hard else ops.sigmoid(x)
    return (x > 0).astype(jnp.float64) if hard else jax.nn.sigmoid(x)


def soft_above(x, threshold, temperature, *, hard: bool = False, ops=None):
    """Weight of ``x > threshold``: ``sigmoid((x - threshold) / temperature)``."""
    return _sigmoid_or_step((x - threshold) / temperature, hard, ops)


def soft_below(x, threshold, temperature, *, hard: bool = False, ops=None):
    """Weight of ``x < threshold``: ``sigmoid((threshold - x) / temperature)``."""
    return _sigmoid_or_step((threshold - x) / temperature, hard, ops)


def at_least(count, n: int, temperature, *, hard: bool = False):
    """Weight of ``count >= n`` for a soft (real-valued) count."""
    return soft_above(count, n - 0.5, temperature, hard=hard)


def exactly(count, n: int, temperature, *, hard: bool = False):
    """Weight of ``count == n`` for a soft count."""
    return at_least(count, n, temperature, hard=hard) * soft_below(
        count, n + 0.5, temperature, hard=hard
    )


def soft_and(weights):
    """AND of weights: their product."""
    out = weights[0]
    for w in weights[1:]:
        out = out * w
    return out


def soft_or(weights):
    """OR of weights: ``1 - Π(1 - w)``."""
    out = 1.0 - weights[0]
    for w in weights[1:]:
        out = out * (1.0 - w)
    return 1.0 - out


SHORT_RUN = 32  # most objects per event for nth_selected's element-wise product


def first_selected(weights, starts, max_run: int | None = None):
    """Soft "first selected object": ``p_c = w_c · Π_{c' before c} (1 - w_c')`` per segment.

    ``weights`` are selection weights of candidates laid out event by event, each event's
    candidates in the order of preference (e.g. decreasing trijet pT); ``starts`` marks the
    first candidate of each event. ``p_c`` is the probability that candidate ``c`` is the
    preferred selected one; with 0/1 weights it is 1 exactly for the first selected
    candidate: a differentiable argmax over the selected candidates.

    Example:
        >>> import jax.numpy as jnp
        >>> p = first_selected(jnp.array([0.0, 1.0, 1.0, 1.0]), jnp.array([1, 0, 0, 1]))
        >>> [float(v) for v in p]
        [0.0, 1.0, 0.0, 1.0]
    """
    return nth_selected(weights, starts, 1, max_run)[:, 0]


def _shift(x, d: int, fill):
    """``x`` moved ``d`` places along axis 0, the first ``d`` places filled with ``fill``."""
    d = min(d, x.shape[0])
    head = jnp.broadcast_to(jnp.asarray(fill, dtype=x.dtype), (d, *x.shape[1:]))
    return jnp.concatenate([head, x[:x.shape[0] - d]])


def nth_selected(weights, starts, n: int, max_run: int | None = None):
    """Soft "i-th selected object", ``i = 0 .. n-1``, of each event.

    ``p[c, i] = w_c · P(exactly i objects before c are selected)``, the probability that
    object ``c`` is the i-th selected one of its event (objects laid out event by event in
    their order, ``starts`` marking each event's first). With 0/1 weights it is 1 exactly for
    the i-th selected object, as ``objects[mask][:, i]`` would pick.

    The count distribution of the objects before ``c`` is the Poisson-binomial generating
    polynomial ``Π (1 - w + w·z)``, truncated to degree ``n - 1``, multiplied along each
    event. Given ``max_run ≤ 32``, the most objects any event has, each object multiplies
    in the factors of the ``max_run - 1`` places before it that are in its event: element-wise
    over all objects, ``(max_run - 1) × n`` fused steps that need no scan. With it the AGC's
    forward-mode gradient step (jets: 17 per event at most) is 1.7× faster than with the
    Hillis–Steele doubling scan it replaces, as fast as with ``jax.lax.associative_scan``,
    and compiles in 2/3 of the time; eagerly (the awkward engine) it is 6× faster than the
    associative scan, whose recursion dispatches many small operations. Longer runs take
    the associative scan.

    Example:
        >>> import jax.numpy as jnp
        >>> p = nth_selected(jnp.array([1.0, 0.0, 1.0, 1.0]), jnp.array([1, 0, 0, 0]), 2)
        >>> [[float(v) for v in row] for row in p]
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    """
    starts = starts.astype(bool)
    if max_run is not None and max_run <= SHORT_RUN:
        # coefficients of z^0 .. z^(n-1) of the product over the places before each object
        before = [jnp.ones_like(weights)] + [jnp.zeros_like(weights)] * (n - 1)
        inside = ~starts  # the place d before each object is in its event (d = 1 here)
        for d in range(1, max_run):
            w = _shift(weights, d, 0.0)
            before = [jnp.where(inside, b * (1.0 - w) + (before[k - 1] * w if k else 0.0), b)
                      for k, b in enumerate(before)]
            inside = inside & ~_shift(starts, d, True)
        return weights[:, None] * jnp.stack(before, axis=-1)

    # polynomial of one object: (1 - w) + w·z, coefficients of z^0 .. z^(n-1)
    # (built by stacking: an indexed update becomes a slow generic scatter under jacfwd)
    zeros = jnp.zeros_like(weights)
    poly = jnp.stack([1.0 - weights, *([weights] if n > 1 else []), *[zeros] * (n - 2)], axis=-1)

    def multiply(a, b):  # truncated polynomial product, batched over objects
        return jnp.stack([sum(a[..., m] * b[..., k - m] for m in range(k + 1))
                          for k in range(n)], axis=-1)

    def combine(left, right):
        f1, a = left
        f2, b = right
        return f1 | f2, jnp.where(f2[..., None], b, multiply(a, b))

    _, inclusive = jax.lax.associative_scan(combine, (starts, poly))
    unit = jnp.asarray([[1.0] + [0.0] * (n - 1)], dtype=weights.dtype)
    before = jnp.where(starts[:, None], unit, jnp.roll(inclusive, 1, axis=0))
    return weights[:, None] * before


def nth_selected_dense(weights, segments, n: int, max_run: int):
    """:func:`nth_selected` computed event by event: the same ``p[c, i]``, much less work.

    ``segments = (owner, first, count)``: each object's event (``owner``; padding objects
    own the event one past the last), each event's first object and its number of objects.
    The objects are laid out as an events × ``max_run`` table and the Poisson-binomial
    polynomial of the objects before each place is built place after place (``max_run``
    steps of ``n`` coefficients per event, where :func:`nth_selected`'s element-wise
    product takes ``max_run - 1`` steps per object). Moving between the flat and the table
    layout is a gather each way, and so is its derivative (:func:`_to_table`): the scatter
    JAX would otherwise write for a gather's transpose is most of a reverse-mode step on
    the CPU. On the AGC's 35 k events (17 jets at most) the fused gradient step takes
    0.5–0.7 of the time with it.

    Example:
        >>> import jax.numpy as jnp
        >>> segments = (jnp.array([0, 0, 0, 1]), jnp.array([0, 3]), jnp.array([3, 1]))
        >>> p = nth_selected_dense(jnp.array([1.0, 0.0, 1.0, 1.0]), segments, 2, 3)
        >>> [[float(v) for v in row] for row in p]
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    """
    owner, first, count = segments
    n_objects, n_events = weights.shape[0], first.shape[0]
    if n_objects == 0 or n_events == 0:
        return jnp.zeros((n_objects, n), dtype=weights.dtype)
    place = jnp.arange(max_run)
    index = (jnp.clip(first[:, None] + place[None, :], 0, n_objects - 1),
             place[None, :] < count[:, None])          # the table's objects, and which are
    event = jnp.clip(owner, 0, n_events - 1)
    at = (event, jnp.clip(jnp.arange(n_objects) - first[event], 0, max_run - 1), owner < n_events)
    to_table, to_flat = (_to_table, _to_flat) if _REVERSE.get() else (_table, _flat)
    table = to_table(weights, index, at)
    # coefficients of z^0 .. z^(n-1) of Π (1 - w + w·z) over the places before each place
    before = [jnp.ones(n_events, weights.dtype)] + [jnp.zeros(n_events, weights.dtype)] * (n - 1)
    places = []
    for r in range(max_run):
        places.append(jnp.stack(before, axis=-1))
        w = table[:, r]
        before = [b * (1.0 - w) + (before[k - 1] * w if k else 0.0) for k, b in enumerate(before)]
    return weights[:, None] * to_flat(jnp.stack(places, axis=1), index, at)


def _where(mask, values, lead: int):
    return jnp.where(mask.reshape(mask.shape + (1,) * (values.ndim - lead)), values, 0.0)


def _table(flat, index, at):
    rows, valid = index
    return _where(valid, flat[rows], 2)


def _flat(table, index, at):
    event, place, real = at
    return _where(real, table[event, place], 1)


_REVERSE = contextvars.ContextVar("reverse_mode", default=False)


@contextlib.contextmanager
def reverse_mode():
    """Within, :func:`nth_selected_dense` is traced for reverse mode only (``jax.grad``,
    ``jax.vjp``; not ``jax.jvp``, ``jax.jacfwd``): its gathers between the flat and the table
    layout carry their own derivative (:func:`_to_table`). Outside, they are JAX's gathers,
    right in either mode and slower in reverse. Set where a reverse pass is traced (the fused
    step, the chunk VJP)."""
    token = _REVERSE.set(True)
    try:
        yield
    finally:
        _REVERSE.reset(token)


# Flat objects ↔ an events × places table: a gather each way, and each the other's
# derivative (the two are inverse on the real objects), so no scatter in a reverse pass.
_to_table = jax.custom_vjp(_table)
_to_flat = jax.custom_vjp(_flat)
_to_table.defvjp(lambda flat, index, at: (_table(flat, index, at), (index, at)),
                 lambda res, ct: (_to_flat(ct, *res), None, None))
_to_flat.defvjp(lambda table, index, at: (_flat(table, index, at), (index, at)),
                lambda res, ct: (_to_table(ct, *res), None, None))
