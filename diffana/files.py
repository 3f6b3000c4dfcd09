"""How diffana writes a file: under a temporary name, synced, then renamed.

Every file diffana writes goes through :func:`replacing` (or :func:`write_atomic`): the new
content is written to ``.diffana-tmp-<pid>-<random>-<name>`` in the same directory, a name no
one else chooses, then synced (``fsync``), renamed over ``<name>``, and the directory synced. A
reader sees the old file or the whole new one, also after a crash or a power cut. A write that
fails removes its own temporary file and nothing else, and raises
:class:`~diffana.exceptions.OutputError` with the path and the operating system's reason.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_atomic(Path(folder) / "notes.txt", "signal region first\\n")
    ...     sorted(p.name for p in Path(folder).iterdir())
    ['notes.txt']
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from diffana.exceptions import OutputError

TEMPORARY_PREFIX = ".diffana-tmp-"


def temporary_name(path: Path) -> Path:
    """Where the new content of ``path`` is written before it is renamed to ``path``."""
    return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def cannot(action: str, path: str | Path, err: OSError) -> OutputError:
    """``<path>: cannot <action> ([Errno N] reason)``, the one line for an operating-system error.

    Example:
        >>> cannot("write", "runs/x/histograms.png", OSError(28, "No space left on device"))
        OutputError('runs/x/histograms.png: cannot write ([Errno 28] No space left on device)')
    """
    return OutputError(f"{path}: cannot {action} ({reason(err)})")


def reason(err: OSError) -> str:
    """What the operating system said: ``[Errno 28] No space left on device``."""
    return f"[Errno {err.errno}] {err.strerror}" if err.errno is not None else str(err)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yields the temporary name for the caller to write ``path``'s new content to (and close);
    then syncs it, renames it to ``path`` and syncs the directory.

    Raises:
        OutputError: the file could not be written (the temporary file is removed).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, path)
        _sync(path.parent)
    except OutputError:
        raise
    except OSError as err:
        raise cannot("write", path, err) from None
    finally:
        with suppress(OSError):  # never hides the error that got here
            tmp.unlink(missing_ok=True)  # gone already once renamed


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` through :func:`replacing`."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)


def _sync(path: Path) -> None:
    """``fsync`` a file (its content) or a directory (its entries: the rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: a file system that cannot sync this
            raise
    finally:
        os.close(fd)

