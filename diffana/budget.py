"""Memory budgets: sizes as a physicist writes them, the memory this machine has free, and
whether an analysis's events fit in it.

``memory_limit`` (configuration) bounds what ``streaming: auto`` lets the events take in
memory; by default it is half the memory available when the run starts (what the system
reports as ``MemAvailable``: free memory plus the page cache it can drop).

Example:
    >>> parse_bytes("1.5 GB"), parse_bytes("512MiB"), parse_bytes(4096)
    (1500000000, 536870912, 4096)
    >>> human_bytes(1_234_567_890)
    '1.23 GB'
"""

from __future__ import annotations

import os
import re

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | str) -> int:
    """A size in bytes from an integer or a string with a unit (``"8 GB"``, ``"512MiB"``).

    Raises:
        ValueError: the size is not a positive number of bytes with a known unit.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8GB or 512MiB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if unit not in _UNITS:
            raise ValueError(f"expected a size such as 8GB, 512MiB or a number of bytes, got "
                             f"{value!r} (units: {', '.join(u for u in _UNITS if u)})")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, three significant figures."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or free physical
    memory where the system does not report that; None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def memory_limit(configured: int | str | None) -> tuple[int | None, str]:
    """The memory budget in bytes and how it was set (for messages)."""
    if configured is not None:
        return parse_bytes(configured), "memory_limit"
    available = available_memory()
    if available is None:
        return None, "memory_limit (unknown: the system reports no available memory)"
    return available // 2, f"half the {human_bytes(available)} available"
