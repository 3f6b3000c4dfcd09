"""The lowered-chunk cache: later passes and later runs take the chunks from the event cache
bit for bit; a touched or replaced input is read again, never taken from a stale entry; the
cache stays within its bound and writes nothing outside ``$DIFFANA_CACHE/lowered``."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from diffana.analysis import Analysis
from diffana.config import load_dict
from diffana.generate import cache_dir, ensure_generated
from diffana.lowered_cache import EntryWriter, LoweredCache, _make_room


def _step(ana):
    p0 = ana.initial_params()
    loss, grad = ana.loss_and_grad(ana.to_unit(p0), p0)
    return float(loss), np.asarray(grad)


def _analysis(folder, data, **updates):
    return Analysis(load_dict({**data, **updates}, source="cache"), folder, progress=False)


def test_later_runs_read_the_cache_bit_for_bit(copied_inputs):
    folder, data = copied_inputs
    before = sorted(p.name for p in folder.iterdir())
    first = _analysis(folder, data)
    assert not first.executor.cached_first_pass
    a = [_step(first), _step(first)]  # from the files (writing the entry), then the entry
    assert first.executor.cache.complete
    again = _analysis(folder, data)
    assert again.executor.cached_first_pass  # no file read to count the events
    assert {n: s.n_events for n, s in again.samples.items()} == \
        {n: s.n_events for n, s in first.samples.items()}
    b = _step(again)
    for x in a:
        assert x[0] == b[0] and np.array_equal(x[1], b[1])
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing in the user's folder
    assert again.executor.cache.path.parent == cache_dir() / "lowered"
    held = _analysis(folder, data, streaming=False, gradient="auto")
    np.testing.assert_allclose(_step(held)[1], b[1], rtol=1e-12, atol=1e-15)


def test_a_touched_or_replaced_input_is_read_again(copied_inputs):
    folder, data = copied_inputs
    ana = _analysis(folder, data)
    original = _step(ana)
    _step(ana)
    key = ana.executor.cache.key
    # touched: the same bytes, another modification time -> another entry, the same numbers
    path = folder / "wjets.root"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = _analysis(folder, data)
    assert touched.executor.cache.key != key and not touched.executor.cached_first_pass
    assert _step(touched)[0] == original[0]
    # replaced: other events, the old modification time -> read again, never the stale entry
    other = ensure_generated("ttbar_vs_wjets", 3_000, 7, progress=None)
    shutil.copy2(other / "wjets.root", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replaced = _analysis(folder, data)
    assert replaced.executor.cache.key not in (key, touched.executor.cache.key)
    assert not replaced.executor.cached_first_pass
    fresh = _step(replaced)
    assert fresh[0] != original[0]
    in_memory = _analysis(folder, data, streaming=False, gradient="auto", lowered_cache=False)
    assert fresh[0] == pytest.approx(_step(in_memory)[0], rel=1e-12)


def test_no_entry_beyond_the_bound(copied_inputs, monkeypatch):
    folder, data = copied_inputs
    monkeypatch.setenv("DIFFANA_LOWERED_CACHE_GB", "1e-6")  # 1 kB: no entry fits
    ana = _analysis(folder, data, seed=11)  # a key of its own
    a, b = _step(ana), _step(ana)
    assert not ana.executor.cache.complete and a[0] == b[0]
    off = _analysis(folder, data, seed=11, lowered_cache=False)
    assert off.executor.cache is None and _step(off)[0] == a[0]


def _entry(root, name, size, age_s):
    path = root / name
    path.mkdir(parents=True)
    (path / "chunk_000000.bin").write_bytes(b"\0" * size)
    (path / "used").touch()
    t = time.time() - age_s
    os.utime(path / "used", (t, t))
    return path


def test_eviction_takes_the_entries_used_longest_ago(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFANA_LOWERED_CACHE_GB", str(3_000 / 1e9))  # 3 kB
    old = _entry(tmp_path, "old", 1_000, 3600)
    older = _entry(tmp_path, "older", 1_000, 7200)
    busy = _entry(tmp_path, "busy", 1_000, 1)  # in use by another run: kept
    assert _make_room(tmp_path, 1_000)
    assert not older.exists() and old.exists() and busy.exists()
    assert not _make_room(tmp_path, 3_000)  # cannot fit beside the entry in use
    assert busy.exists() and not old.exists()


def test_a_killed_writers_partial_entry_is_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    partial = tmp_path / f".k.{dead}.123"
    partial.mkdir()
    (partial / "chunk_000000.bin").write_bytes(b"\0" * 10)
    alive = tmp_path / f".k.{os.getpid()}.456"
    alive.mkdir()
    assert _make_room(tmp_path, 10)
    assert not partial.exists() and alive.exists()


def test_two_writers_of_one_entry_keep_the_first(tmp_path):
    chunk = {"weight": np.arange(4.0), "masks": {}, "events": {"__slot__": np.zeros(4, np.int32)}}
    entry = LoweredCache(tmp_path, "k")
    writers = [EntryWriter(entry, 1, {"n_events": [4]}) for _ in range(2)]
    for i, w in enumerate(writers):
        w.add(((0, 0, 2), (1, 2, 4 - i)), 4 - i, chunk)
    writers[0].finish()
    writers[1].finish()  # the entry is there: this one is dropped
    read = LoweredCache(tmp_path, "k")
    assert read.complete and [p.name for p in tmp_path.iterdir()] == ["k"]
    ((sets, n, got),) = list(read.chunks())
    assert (sets, n) == (((0, 0, 2), (1, 2, 4)), 4) and got["masks"] == {}
    np.testing.assert_array_equal(got["weight"], chunk["weight"])
    assert got["events"]["__slot__"].dtype == np.int32


def test_a_cache_that_cannot_be_written_leaves_the_run_as_without_it(copied_inputs,
                                                                      monkeypatch, caplog):
    folder, data = copied_inputs
    blocked = folder / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("DIFFANA_CACHE", str(blocked / "cache"))  # mkdir fails
    ana = _analysis(folder, data, seed=12)
    with caplog.at_level("WARNING", logger="diffana"):
        a, b = _step(ana), _step(ana)
    assert a[0] == b[0] and not ana.executor.cache.complete
    assert "lowered-chunk cache cannot be written" in caplog.text
    assert caplog.text.count("cannot be written") == 1  # said once, not on every step
