"""JAX's persistent compilation cache, in diffana's cache directory.

A run compiles its chunk function, its objective and many small functions; a second run of
the same configuration (or one that differs only in values, steps or output) finds them in
``$DIFFANA_CACHE/jax-compilation`` (``DIFFANA_CACHE`` defaults to ``~/.cache/diffana``) and
loads them instead of compiling again. On by default; ``compilation_cache: false`` in the
configuration or ``diffana run --no-compilation-cache`` leaves JAX's setting alone.

A cache directory configured for JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)`` before diffana is used) is kept: diffana
then neither moves nor turns it off.

Runs at the same time may share the directory. JAX (0.10) writes an entry in place, not under
a temporary name, and skips a key that exists: a run that reads an entry while another run is
still writing it fails to decompress it, warns ("Error reading persistent compilation cache
entry") and compiles for itself. Its numbers do not change. Removing the directory is always
safe.

This module only sets JAX's own configuration (``jax.config``); the cache is JAX's. The same
switch keeps traced functions in ``$DIFFANA_CACHE/jax-exported`` (:mod:`diffana.exported`):
:func:`exported_dir` says where, or ``None`` when off.

Example:
    >>> from diffana.compilation import compilation_cache_dir
    >>> compilation_cache_dir().name
    'jax-compilation'
"""

from __future__ import annotations

from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from diffana.generate import cache_dir

# Compile times above which a function is written to the cache: every one. Most of a run's
# compile time is in a few large functions, but the many small ones (one per eager operation
# shape) add seconds of their own.
MIN_COMPILE_SECONDS = 0.0

_ours: str | None = None  # the directory diffana set, if it set one
_exported: Path | None = None  # where traced functions are kept (diffana.exported), if on


def compilation_cache_dir() -> Path:
    """``$DIFFANA_CACHE/jax-compilation`` (``~/.cache/diffana/jax-compilation``)."""
    return cache_dir() / "jax-compilation"


def exported_cache_dir() -> Path:
    """``$DIFFANA_CACHE/jax-exported``: traced functions (:mod:`diffana.exported`)."""
    return cache_dir() / "jax-exported"


def exported_dir() -> Path | None:
    """Where traced functions are kept now, or ``None`` (the cache is off)."""
    return _exported


def use_compilation_cache(enabled: bool = True, directory: str | Path | None = None
                          ) -> Path | None:
    """Compile from and into the persistent cache (``enabled``), or stop doing so.

    Idempotent and cheap: called by every :class:`diffana.Analysis`. A directory that JAX was
    given by someone else is left as it is, on or off.

    Args:
        enabled: use the cache (``True``) or stop using diffana's (``False``).
        directory: where (default :func:`compilation_cache_dir`, read at each call, so that
            ``DIFFANA_CACHE`` set later is followed).

    Returns:
        The directory compilations go to, or ``None`` when there is none.
    """
    global _ours, _exported
    # traced functions follow the switch, always in diffana's own cache directory
    _exported = exported_cache_dir() if enabled else None
    current = jax.config.jax_compilation_cache_dir
    if current is not None and current != _ours:
        return Path(current)  # configured for JAX itself: not diffana's to change
    if not enabled:
        if current is not None:
            jax.config.update("jax_compilation_cache_dir", None)
            jax_cache.reset_cache()
        _ours = None
        return None
    target = Path(directory) if directory is not None else compilation_cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    if current != str(target):
        jax.config.update("jax_compilation_cache_dir", str(target))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        # every entry, whatever its size (-1: no minimum, and no filesystem-chosen one)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        jax_cache.reset_cache()  # JAX opens its cache once: reopen it at the new place
        _ours = str(target)
    return target
