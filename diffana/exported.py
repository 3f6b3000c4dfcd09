"""Traced functions kept across runs: ``jax.export`` artefacts beside the compilation cache.

JAX's persistent compilation cache (:mod:`diffana.compilation`) saves XLA's work, but to find
its entry a run must still trace each function in Python and lower it to StableHLO: for the
AGC, the fused gradient step, the model's fits and the final evaluations take seconds of
tracing on every run. A function wrapped with :func:`persistent` is traced once, exported
(``jax.export``: serialised StableHLO) into ``$DIFFANA_CACHE/jax-exported``, and a later run
with the same key deserialises it and calls it: no tracing; XLA's compilation of it comes from
the compilation cache as before. The numbers are the same (the same StableHLO is compiled).

The key is a SHA-256 of

* the function's name and the content of its static arguments (a :class:`~diffana.stages.Kernel`,
  an :class:`~diffana.stats.objective.Objective`: configuration, plan, bin edges, chunk layout,
  model — everything a trace reads from them, by value, not by identity);
* the shapes, dtypes and tree structure of the other arguments;
* the source of every module of diffana and of every module that defines an observable kind
  (an analysis's own, through ``imports:``): an edit to the code is another key;
* the versions of JAX, jaxlib, NumPy and pyhf, JAX's backend and its 64-bit setting.

A static argument whose content cannot be read (an object of a kind :func:`fingerprint` does not
know) is traced as usual, never guessed at. Entries are written under a temporary name and
renamed into place, so runs sharing the directory see whole entries or none; an unreadable
entry is traced again (with one debug line). The directory is bounded by
``$DIFFANA_EXPORTED_CACHE_MB`` (default 512 MB; an AGC entry is 0.2 MB): after a write that
passes it, the entries used longest ago are removed, under the directory's lock. It follows
``compilation_cache`` (``--no-compilation-cache`` turns both off); removing it is always safe.

Hand-written because no maintained library keys ``jax.export`` artefacts by the content of
static arguments; serialising them needs ``flatbuffers`` (JAX's own optional dependency).

Example:
    >>> import jax, jax.numpy as jnp
    >>> f = persistent(jax.jit(lambda n, x: x * n, static_argnums=0), "scale", (0,))
    >>> float(f(3, jnp.float64(2.0)))
    6.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import os
import sys
import threading
import time
import types
from pathlib import Path

import jax
import numpy as np
from pydantic import BaseModel

from diffana import compilation
from diffana.locks import exclusive
from diffana.log import logger

DEFAULT_LIMIT_MB = 512.0
MEMO = 64  # functions held per wrapped function in a process
SUFFIX = ".exported"
_VERSIONS = ("jax", "jaxlib", "numpy", "pyhf")


#: configuration keys that no traced function reads: a run that differs only in them (another
#: learning rate, inference on or off, another name) is not traced again
NOT_TRACED = {"AnalysisConfig": ("name", "description", "optimiser", "inference", "step_size",
                                 "com_energy", "memory_limit", "prefetch", "lowered_cache",
                                 "compilation_cache")}


class Unreadable(Exception):
    """A static argument whose content :func:`fingerprint` cannot read."""


def fingerprint(obj) -> str:
    """A SHA-256 of ``obj``'s content: equal for equal configurations, plans, kernels and
    models built in different processes (not their identity, not ``hash()``, which Python
    salts per process for strings)."""
    h = hashlib.sha256()
    _feed(h, obj, set())
    return h.hexdigest()


def _feed(h, obj, path: set[int]) -> None:  # noqa: C901 - one case per kind of value
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, enum.Enum, slice,
                                       range)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        a = np.asarray(obj)
        h.update(f"nd:{a.dtype.str}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
        return
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type, types.ModuleType,
                        functools.partial)):
        if isinstance(obj, functools.partial):
            h.update(b"partial(")
            _feed(h, (obj.func, obj.args, obj.keywords), path)
            h.update(b")")
            return
        if getattr(obj, "__name__", "") == "<lambda>" or "<locals>" in getattr(
                obj, "__qualname__", ""):
            raise Unreadable(f"a local function {obj!r}")  # its closure is not in its name
        h.update(f"fn:{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)};"
                 .encode())
        return
    if id(obj) in path:
        raise Unreadable(f"a cycle through {type(obj).__name__}")
    path.add(id(obj))
    try:
        h.update(f"<{type(obj).__module__}.{type(obj).__qualname__}".encode())
        if isinstance(obj, (list, tuple)):
            for x in obj:
                _feed(h, x, path)
        elif isinstance(obj, dict):
            for k, v in obj.items():  # insertion order: iterating them is part of a trace
                _feed(h, k, path)
                _feed(h, v, path)
        elif isinstance(obj, (set, frozenset)):
            for item in sorted(fingerprint(x) for x in obj):
                h.update(item.encode())
        elif isinstance(obj, BaseModel):
            skip = NOT_TRACED.get(type(obj).__qualname__, ())
            _feed(h, {name: getattr(obj, name) for name in type(obj).model_fields
                      if name not in skip}, path)
        elif dataclasses.is_dataclass(obj):
            _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, path)
        elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
            _feed(h, _attributes(obj), path)
        else:
            raise Unreadable(f"an object of type {type(obj).__name__}")
        h.update(b">")
    finally:
        path.discard(id(obj))


def _attributes(obj) -> dict:
    out = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name) and name not in out:
                out[name] = getattr(obj, name)
    return out


@functools.cache
def _environment() -> str:
    """The versions, the backend and diffana's own source (with every observable kind's)."""
    h = hashlib.sha256()
    for name in _VERSIONS:
        try:
            h.update(f"{name}={importlib.metadata.version(name)};".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{name}=none;".encode())
    h.update(f"{jax.default_backend()};x64={jax.config.jax_enable_x64};".encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _kind_sources() -> str:
    """The source of every module that defines an observable kind outside diffana (read at
    each new key: an analysis's ``imports:`` may register kinds at any time)."""
    from diffana.observe import KINDS

    h = hashlib.sha256()
    files = set()
    for kind in KINDS.values():
        for fn in (kind.compute, kind.prepare, kind.check, kind.parameters):
            module = sys.modules.get(getattr(fn, "__module__", None) or "")
            if module is not None and not module.__name__.startswith("diffana."):
                files.add(getattr(module, "__file__", None))
    for f in sorted(f for f in files if f and Path(f).is_file()):
        h.update(f.encode())
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def _limit() -> int:
    return int(float(os.environ.get("DIFFANA_EXPORTED_CACHE_MB", DEFAULT_LIMIT_MB)) * 1e6)


class Persistent:
    """A ``jax.jit`` function whose traced form is kept across runs (see the module's notes).

    Called like the jitted function. Calls under a trace (its arguments tracers) or with a
    Python scalar among the traced arguments go to the jitted function itself; while the
    cache is off, so do the others, with their arguments placed on one device (see
    :func:`_sharding`). Anything else (``.lower``, ``.trace``) is the jitted function's.
    """

    def __init__(self, jitted, name: str, static_argnums: tuple[int, ...] = ()):
        self._jitted, self._name, self._static = jitted, name, tuple(static_argnums)
        self._calls: dict = {}  # (static objects, avals) → the deserialised function, jitted
        self._first = threading.Lock()
        self._placed: dict = {}  # sharding → the jitted function with in_shardings
        functools.update_wrapper(self, jitted)

    def __getattr__(self, name):
        return getattr(self._jitted, name)

    def __call__(self, *args):
        call, dynamic, out = self.resolve(args)
        return call(*dynamic) if out is _PENDING else out

    def bind(self, *leading) -> Bound:
        """This function with its first arguments given once: ``bind(a, b)(c, d)`` is
        ``self(a, b, c, d)``, with ``a`` and ``b`` read once, not at every call (a box fit's
        model and its 316 template arrays took 0.15 ms a call to read; a fit that starts at
        its minimum takes 0.33 ms). Every static argument must be among them."""
        if any(i >= len(leading) for i in self._static):
            raise ValueError(f"{self._name}: bind() needs every static argument")
        return Bound(self, leading)

    def resolve(self, args: tuple):
        """``(call, dynamic, out)``: the function to call with the traced arguments
        ``dynamic``, compiled or loaded at the first call with their signature (whose result
        is ``out``; otherwise ``out`` is ``_PENDING``). ``call`` is ``None`` where there is
        none to keep (``out`` is then the result)."""
        static = tuple(args[i] for i in self._static)
        dynamic = tuple(a for i, a in enumerate(args) if i not in self._static)
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        signature = _signature(leaves)
        if signature is None:  # under a trace, or a Python scalar
            return None, dynamic, self._jitted(*args)
        avals, sharding = signature
        directory = compilation.exported_dir()
        if directory is None:
            return self._with_static(static, sharding), dynamic, _PENDING
        try:
            memo = (*static, tree, avals, sharding)
            call = self._calls.get(memo)
        except TypeError:  # an unhashable static argument: jit would refuse it too
            return None, dynamic, self._jitted(*args)
        if call is not None:
            return call, dynamic, _PENDING
        with self._first:  # a second thread's first call waits for this one's compilation
            call = self._calls.get(memo)
            if call is not None:
                return call, dynamic, _PENDING
            call = self._load_or_export(directory, static, tree, avals, args, sharding)
            out = call(*dynamic)  # compiles
            if len(self._calls) >= MEMO:  # the oldest: its kernel is likely gone
                self._calls.pop(next(iter(self._calls)))
            self._calls[memo] = call
            return call, dynamic, out

    def _load_or_export(self, directory: Path, static: tuple, tree, avals, args, sharding):
        try:
            content = [fingerprint(s) for s in static]
        except Unreadable as why:
            logger.debug("%s: traced each run (%s)", self._name, why)
            return self._with_static(static, sharding)
        avals = tuple((shape, str(dtype), bool(weak)) for shape, dtype, weak in avals)
        h = hashlib.sha256(f"{self._name};{tree};{avals};".encode())
        for part in (*content, _environment(), _kind_sources()):
            h.update(part.encode())
        path = directory / f"{self._name}-{h.hexdigest()[:32]}{SUFFIX}"
        exported = _read(path)
        if exported is None:
            exported = jax.export.export(self._jitted)(*args)
            try:
                _write(path, exported.serialize())
            except (ImportError, ValueError) as why:  # no flatbuffers, or an output type
                logger.debug("%s: not kept (%s)", self._name, why)  # jax cannot serialise
        return jax.jit(exported.call, in_shardings=sharding)

    def _placing(self, sharding):
        """The jitted function with its arguments placed on ``sharding`` by jit itself, called
        like it (one wrapper per sharding: a Python ``device_put`` of the AGC fit's 316
        arguments cost more than the fit)."""
        placed = self._placed.get(sharding)
        if placed is None:
            placed = self._placed.setdefault(sharding, jax.jit(
                self._jitted, static_argnums=self._static, in_shardings=sharding))
        return placed

    def _with_static(self, static: tuple, sharding):
        """:meth:`_placing`'s function, called with the traced arguments only."""
        placed = self._placing(sharding)

        def call(*dynamic):
            given, rest = iter(static), iter(dynamic)
            return placed(*(next(given) if i in self._static else next(rest)
                            for i in range(len(static) + len(dynamic))))
        return call


class Bound:
    """A :class:`Persistent` function with its first arguments given (:meth:`Persistent.bind`).

    The function to call is looked up once per signature of the other arguments; the given
    ones are held, so they stay the same objects.
    """

    def __init__(self, function: Persistent, leading: tuple):
        self._function, self._leading = function, leading
        self._calls: dict = {}  # (tree, avals, sharding) of the other arguments → call

    def __call__(self, *rest):
        leaves, tree = jax.tree_util.tree_flatten(rest)
        signature = _signature(leaves)
        found = None if signature is None else self._calls.get((tree, signature))
        if found is None:
            call, dynamic, out = self._function.resolve((*self._leading, *rest))
            if call is not None and signature is not None:
                self._calls[(tree, signature)] = (call, dynamic[:len(dynamic) - len(rest)])
            return call(*dynamic) if out is _PENDING else out
        call, given = found
        return call(*given, *rest)


_PENDING = object()  # Persistent.resolve: the function is to be called still
_TRACER, _ARRAY, _OTHER, _NONE = range(4)
_KINDS: dict[type, int] = {}  # what each type of argument is: checked once per type


def _kind(t: type) -> int:
    if issubclass(t, jax.core.Tracer):
        return _TRACER
    if issubclass(t, jax.Array):
        return _ARRAY
    return _OTHER if hasattr(t, "dtype") else _NONE


def _signature(leaves: list):
    """``(avals, sharding)`` of a call's array arguments, or None (a tracer among them, or an
    argument without a dtype); ``avals``: ``(shape, dtype, weak_type)`` of each.

    One pass, and each argument's kind taken from its type's (``isinstance`` against JAX's
    abstract classes costs microseconds, and a fit of the AGC model has 316 arguments: the
    inference calls it some 200 times). ``sharding``: see :func:`_sharding`.
    """
    avals, committed = [], None
    for x in leaves:
        kind = _KINDS.get(type(x))
        if kind is None:
            kind = _KINDS.setdefault(type(x), _kind(type(x)))
        if kind == _ARRAY:
            if committed is None and x.committed:
                committed = x.sharding
            avals.append((x.shape, x.dtype, x.weak_type))
        elif kind == _OTHER:
            avals.append((x.shape, x.dtype, False))
        else:
            return None
    return tuple(avals), committed if committed is not None else _sharding()


def _sharding():
    """Where a call runs: a committed argument's device (:func:`_signature`), else JAX's
    default device.

    Every call places its arguments there explicitly, so that a call with arrays a previous
    call returned (committed to the device) and one with fresh arrays (uncommitted) compile
    to one executable: jit keys its compilation by each argument's placement, and the AGC's
    fused step otherwise compiled twice, 15 s each, at the first two optimiser steps.
    """
    return _on(jax.config.jax_default_device)


@functools.lru_cache(maxsize=8)
def _on(default) -> jax.sharding.Sharding:
    if not isinstance(default, jax.Device):
        default = jax.devices(default)[0] if default else jax.devices()[0]
    return jax.sharding.SingleDeviceSharding(default)


def persistent(jitted, name: str, static_argnums: tuple[int, ...] = ()) -> Persistent:
    """Wrap ``jitted`` (``jax.jit(f, static_argnums=...)``, the same ``static_argnums``) so
    that its traced form is kept across runs under ``name`` (unique among diffana's)."""
    return Persistent(jitted, name, static_argnums)


def _read(path: Path):
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as err:  # noqa: BLE001 - any damage: trace again
        logger.debug("%s: unreadable (%s); traced again", path, err)
        return None
    try:
        os.utime(path)  # used now: the last to be evicted
    except OSError:
        pass
    return exported


def _write(path: Path, blob: bytes) -> None:
    """Into place by rename (a reader sees all of it or nothing); then within the bound."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as err:  # no cache directory (DIFFANA_CACHE not a directory, no space)
        logger.debug("%s: not written (%s)", path, err)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return
    _evict(path.parent, _limit())


def _evict(directory: Path, limit: int) -> None:
    """Remove the entries used longest ago until the directory holds at most ``limit``."""
    entries = []
    for p in directory.glob(f"*{SUFFIX}"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    held = sum(size for _, size, _ in entries)
    if held <= limit:
        return
    with exclusive(directory / "exported.lock"):
        for _, size, p in sorted(entries):
            if held <= limit * 0.8:
                break
            p.unlink(missing_ok=True)
            held -= size

