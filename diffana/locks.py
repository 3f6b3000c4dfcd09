"""One exclusive lock between processes that share files (the cache of generated events).

The lock is ``fcntl.flock`` on a small lock file, chosen over the ``filelock`` package because:
it is in the standard library (no new dependency); the kernel releases it when its holder's
descriptor closes, so a crashed or killed process never leaves it held and no stale-lock
heuristics are needed; and the lock file's content stays ours, so it can name the process
holding it (filelock's ``UnixFileLock`` truncates the file when a waiter opens it). Where
there are no such locks (no ``fcntl``, or a file system that refuses ``flock``), the caller is
told and must stay correct without them; :func:`diffana.generate.ensure_generated` does, by
writing into a directory of its own and renaming it into place.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from diffana.locks import exclusive
    >>> with tempfile.TemporaryDirectory() as d, exclusive(Path(d) / "cache.lock") as locked:
    ...     locked
    True
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

# flock errors that mean "this file system gives no locks" (NFS without a lock daemon, Lustre
# mounted with noflock), not "the lock is held"
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _holder(fd: int) -> int | None:
    """The process id the holder wrote into the lock file (None if not written yet)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


@contextmanager
def exclusive(path: Path, on_wait: Callable[[int | None], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    If another process holds it, ``on_wait(pid)`` is called once with that process's id (None
    if it has not written it yet) and the call blocks until the lock is free. Yields True while
    the lock is held, False where the platform or file system gives no locks. The lock file is
    left in place: removing it would let two processes lock two different files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = fcntl is not None and _lock(fd, on_wait)
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield locked
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, on_wait: Callable[[int | None], None] | None) -> bool:
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(_holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as err:
        if err.errno in _NO_LOCKS:
            return False
        raise
    return True
