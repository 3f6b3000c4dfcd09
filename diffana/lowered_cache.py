"""The lowered-chunk cache: streamed chunks kept on disk, read back memory-mapped.

Reading, decompressing, preselecting and lowering do not depend on the parameters, so a
streamed analysis need not repeat them on every pass. The first pass that reads the files
writes each chunk as it goes to the device: padded to the run's
:class:`~diffana.chunks.ChunkLayout`, its flat arrays end to end in one file per chunk (64-byte
aligned). Later passes, and later runs with the same inputs and configuration, map those
files instead (page-cache speed) and give the same arrays bit for bit.

Where: ``$DIFFANA_CACHE/lowered/<key>/`` (beside the generated events; never in the user's
folders). The key is a SHA-256 of everything that shapes the chunks:

* each input file's identity (resolved path, size, modification time, ROOT file UUID, tree,
  entries; :func:`diffana.io.identity`): a file touched or replaced is another key, so a
  stale entry is never read;
* the configuration, less the keys that only act after lowering (model, objective,
  optimiser, where and how the chunks run);
* the source of the modules that read and lower (and of every registered observable kind,
  whose ``prepare`` runs in lowering) and the format version.

An entry is written under a temporary name of its own and renamed into place complete
(``manifest.json`` last), so a concurrent run sees a whole entry or none; two runs that write
the same entry keep the first. The size is bounded by ``$DIFFANA_LOWERED_CACHE_GB`` (default
20 GB, and never more than half the file system's free space): before an entry is written,
the entries used longest ago (each pass touches its entry's ``used`` file) are removed until
it fits, under the cache's lock (:func:`diffana.locks.exclusive`), and so are the partial
entries of writers that were killed; an entry used in the last minute is never removed, and
an entry that cannot fit is not written (the run then reads the files on every pass, as
without the cache). Removing ``$DIFFANA_CACHE/lowered`` is always safe
between runs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import mmap
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from diffana.locks import exclusive

FORMAT = 2  # 2: chunks packed with several event sets each
ALIGN = 64
DEFAULT_LIMIT_GB = 20.0
IN_USE_S = 60.0  # an entry used this recently is never evicted
#: configuration keys that act after lowering: they do not change the chunks (parameters and
#: regions are kept in the key: a cut at a fixed value is applied in lowering)
AFTER_LOWERING = ("name", "description", "model", "objective", "optimiser", "gradient",
                  "streaming", "memory_limit", "prefetch", "lowered_cache", "device",
                  "executor", "engine", "step_size", "com_energy")
#: modules whose code shapes the lowered chunks
LOWERING_MODULES = ("diffana.io", "diffana.checks", "diffana.events", "diffana.ragged",
                    "diffana.plan", "diffana.chunks", "diffana.observe", "diffana.select")


def cache_limit() -> int:
    """The cache's bound in bytes (``$DIFFANA_LOWERED_CACHE_GB``, default 20 GB)."""
    return int(float(os.environ.get("DIFFANA_LOWERED_CACHE_GB", DEFAULT_LIMIT_GB)) * 1e9)


def cache_key(cfg, readers) -> str:
    """The key of a configuration's lowered chunks on these inputs (see the module's notes)."""
    config = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in AFTER_LOWERING}
    inputs = [{"sample": r.name, "files": r.inputs, "branches": r.branches, "norm": r.norm}
              for r in readers]
    h = hashlib.sha256(json.dumps({"format": FORMAT, "config": config, "inputs": inputs},
                                  sort_keys=True, default=str).encode())
    for source in sorted(_lowering_sources()):
        h.update(source.encode())
        h.update(Path(source).read_bytes())
    return h.hexdigest()[:32]


def _lowering_sources() -> set[str]:
    from diffana.observe import KINDS

    files = {getattr(sys.modules.get(m), "__file__", None) for m in LOWERING_MODULES}
    for kind in KINDS.values():
        for fn in (kind.compute, kind.prepare):
            if callable(fn):
                try:
                    files.add(inspect.getsourcefile(fn))
                except TypeError:  # a builtin: no source
                    pass
    return {f for f in files if f and Path(f).is_file()}


def _leaves(tree: dict, path: tuple = ()):
    """``(key path, array)`` of a nested dict of arrays, in a fixed order."""
    for k in sorted(tree):
        v = tree[k]
        if isinstance(v, dict):
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), np.asarray(v)


def _skeleton(v, leaves: dict, path: tuple):
    """The nested dicts of ``v`` (empty ones too), each array replaced by its number in
    ``leaves`` (``{key path: number}``)."""
    if isinstance(v, dict):
        return {k: _skeleton(w, leaves, (*path, k)) for k, w in v.items()}
    return leaves[path]


def _fill(skeleton: dict, arrays: list) -> dict:
    """The nested dicts of a skeleton with its arrays in place."""
    return {k: _fill(v, arrays) if isinstance(v, dict) else arrays[v] for k, v in skeleton.items()}


class LoweredCache:
    """One entry of the cache (``root/key``): the padded host chunks of one streamed analysis.

    ``complete`` says whether the entry is there to read (:meth:`chunks`); otherwise
    :meth:`writer` writes it while a pass reads the files.
    """

    def __init__(self, root: Path, key: str):
        self.root, self.key = Path(root), key
        self.path = self.root / key
        self.manifest = self.read_manifest()

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    def read_manifest(self) -> dict | None:
        """The entry's manifest if the entry is complete (None otherwise)."""
        try:
            manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return manifest if manifest.get("format") == FORMAT else None

    @property
    def first_pass(self) -> dict | None:
        """What the first pass found, stored with the entry (events per set, chunks, chunk
        bytes, the chunk layout)."""
        return self.manifest["first_pass"] if self.complete else None

    def touch(self) -> None:
        """Mark the entry as in use now (eviction takes the entries used longest ago)."""
        _touch(self.path / "used")

    def chunks(self):
        """``(segments, events, host chunk)`` of each chunk, memory-mapped (read-only arrays);
        ``segments``: ``((set, first, stop), ...)``, where each event set's events lie.

        Raises:
            OSError: the entry went away (another run evicted it): read the files instead.
        """
        self.touch()
        leaves = self.manifest["leaves"]
        for i, (segments, n) in enumerate(self.manifest["chunks"]):
            with open(self.path / f"chunk_{i:06d}.bin", "rb") as f:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            arrays = [np.frombuffer(buf, dtype=leaf["dtype"], count=int(np.prod(leaf["shape"])),
                                    offset=leaf["offset"]).reshape(leaf["shape"])
                      for leaf in leaves]
            yield tuple(tuple(s) for s in segments), n, _fill(self.manifest["skeleton"], arrays)

    def writer(self, n_chunks: int, chunk_bytes: int, first_pass: dict) -> EntryWriter | None:
        """A writer of this entry, or None where it cannot fit the cache's bound."""
        need = n_chunks * chunk_bytes
        if not _make_room(self.root, need):
            return None
        return EntryWriter(self, n_chunks, first_pass)


class EntryWriter:
    """Writes an entry chunk by chunk under a temporary name; :meth:`finish` renames it into
    place once every chunk is written (:meth:`abandon`: removes it)."""

    def __init__(self, entry: LoweredCache, n_chunks: int, first_pass: dict):
        self.entry, self.n_chunks, self.first_pass = entry, n_chunks, first_pass
        self.tmp = entry.root / f".{entry.key}.{os.getpid()}.{time.monotonic_ns()}"
        self.tmp.mkdir(parents=True)
        self.chunks: list = []
        self.leaves: list | None = None
        self.skeleton: dict | None = None

    def add(self, segments, n: int, host: dict) -> None:
        """Write a chunk of ``n`` events, its sets' ``segments`` ``((set, first, stop), ...)``:
        its padded host arrays, in order."""
        pairs = list(_leaves(host))
        offset, table = 0, []
        for path, a in pairs:
            table.append({"path": list(path), "dtype": a.dtype.str, "shape": list(a.shape),
                          "offset": offset})
            offset += -(-a.nbytes // ALIGN) * ALIGN
        if self.leaves is None:
            self.leaves = table
            self.skeleton = _skeleton(host, {path: i for i, (path, _) in enumerate(pairs)}, ())
        elif table != self.leaves:  # every chunk has the layout's shapes
            raise ValueError("lowered cache: chunks of different shapes")
        with open(self.tmp / f"chunk_{len(self.chunks):06d}.bin", "wb") as f:
            for (_, a), leaf in zip(pairs, table, strict=True):
                f.seek(leaf["offset"])
                f.write(np.ascontiguousarray(a).data)
            f.truncate(offset)
        self.chunks.append(([[int(g), int(a), int(b)] for g, a, b in segments], int(n)))

    def finish(self) -> None:
        """Put the entry in place (if every chunk was written; the first writer wins)."""
        if len(self.chunks) != self.n_chunks or self.leaves is None:
            self.abandon()
            return
        manifest = {"format": FORMAT, "chunks": self.chunks, "leaves": self.leaves,
                    "skeleton": self.skeleton, "first_pass": self.first_pass}
        (self.tmp / "manifest.json").write_text(json.dumps(manifest))
        _touch(self.tmp / "used")
        try:
            os.rename(self.tmp, self.entry.path)
        except OSError:  # written meanwhile by another run: keep theirs (the same chunks)
            self.abandon()
            self.entry.manifest = self.entry.read_manifest()
            return
        self.entry.manifest = manifest

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:
        pass


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """``(last use, bytes, path)`` of every complete entry."""
    out = []
    for p in root.iterdir() if root.is_dir() else ():
        if p.name.startswith(".") or not p.is_dir():
            continue
        try:
            used = (p / "used").stat().st_mtime
            size = sum(f.stat().st_size for f in p.iterdir())
        except OSError:
            continue
        out.append((used, size, p))
    return sorted(out)


def _remove_abandoned(root: Path) -> None:
    """Remove the partial entries of writers that died (killed mid-write): a temporary
    directory ``.<key>.<pid>.<ns>`` whose process is gone."""
    for p in root.iterdir():
        parts = p.name.split(".")
        if not (p.name.startswith(".") and len(parts) == 4 and parts[2].isdigit()):
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:  # another user's process: alive
            pass


def _make_room(root: Path, need: int) -> bool:
    """Evict the entries used longest ago until ``need`` more bytes fit; whether they do."""
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / "lowered.lock"):
        _remove_abandoned(root)
        free = shutil.disk_usage(root).free
        entries = _entries(root)
        held = sum(size for _, size, _ in entries)
        limit = min(cache_limit(), held + free // 2)
        now = time.time()
        for used, size, path in entries:
            if held + need <= limit:
                break
            if now - used < IN_USE_S:
                continue
            shutil.rmtree(path, ignore_errors=True)
            held -= size
        return held + need <= limit
