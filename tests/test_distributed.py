"""The Dask executor: the same optimisation as locally, a lost worker recovered, the same errors;
streamed on the workers (each its own part of the files, read ahead, from its own lowered-chunk
cache after the first step): the same numbers as in memory."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from conftest import ROOT, default_config_dict  # noqa: E402

from diffana.analysis import Analysis  # noqa: E402
from diffana.config import load_dict  # noqa: E402
from diffana.exceptions import DataError  # noqa: E402
from diffana.io import write_events  # noqa: E402
from diffana.optimise import optimise  # noqa: E402

STEPS = 5


@pytest.fixture(scope="module")
def cluster():
    # a random port for the scheduler's HTTP server: another cluster may hold 8787
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:
        yield c


def config(executor=None, events=5_000, **updates):
    data = default_config_dict(events)
    data.update({"chunk_size": 1024, "gradient": "forward", **updates})
    if executor:
        data["executor"] = executor
    return load_dict(data, source="distributed")


def steps(ana, on_step=None):
    p0 = ana.initial_params()
    res = optimise(lambda u: ana.loss_and_grad(u, p0), ana.to_unit(p0), "adam",
                   {"learning_rate": 0.05}, steps=STEPS, progress=False, on_step=on_step)
    return res.loss, np.asarray(res.params)


@pytest.fixture(scope="module")
def local():
    return steps(Analysis(config(), ROOT / "configs", progress=False))


def test_dask_steps_equal_local(cluster, local):
    ana = Analysis(config({"kind": "dask", "address": cluster.scheduler_address}),
                   ROOT / "configs", progress=False)
    try:
        assert ana.executor.tasks >= 4 and ana.executor.gradient_mode == "forward"
        assert {n: s.n_events for n, s in ana.samples.items()} == {"ttbar": 1000, "wjets": 4000}
        loss, u = steps(ana)
        assert 0 < ana.executor.bytes_per_step < 200_000  # parameters out, small sums back
    finally:
        ana.close()
    np.testing.assert_allclose(loss, local[0], rtol=1e-9)
    np.testing.assert_allclose(u, local[1], rtol=1e-9)


@pytest.mark.parametrize("streaming", [False, True])
def test_lost_worker_is_recovered(cluster, local, caplog, streaming):
    client = distributed.Client(cluster)
    ana = Analysis(config({"kind": "dask", "address": cluster.scheduler_address},
                          streaming=streaming), ROOT / "configs", progress=False)
    victim = next(iter(client.run(os.getpid).values()))

    def kill(step, loss, u):
        if step == 2:
            os.kill(victim, signal.SIGKILL)

    try:
        with caplog.at_level(logging.WARNING, logger="diffana"):
            loss, u = steps(ana, on_step=kill)
    finally:
        ana.close()
        # the nanny starts the killed worker again: the cluster as the module's other tests
        # expect it (two workers), not one while the new worker is still starting
        client.wait_for_workers(2, timeout=60)
        client.close()
    np.testing.assert_allclose(loss, local[0], rtol=1e-9)
    np.testing.assert_allclose(u, local[1], rtol=1e-9)
    assert any("left" in r.getMessage() for r in caplog.records), caplog.text


def test_worker_read_error_is_the_local_error(cluster, tmp_path):
    """Baskets damaged after the header: the client counts the events, the reader fails."""
    rng = np.random.default_rng(1)
    n = 4000
    import awkward as ak

    jets = ak.zip({f: ak.unflatten(rng.uniform(1, 100, 4 * n), np.full(n, 4))
                   for f in ("pt", "eta", "btagCSVV2")})
    muons = ak.zip({f: ak.unflatten(rng.uniform(1, 100, n), np.ones(n, int))
                    for f in ("pt", "eta", "phi", "mass")})
    path = write_events(tmp_path / "damaged.root", {"Jet": jets, "Muon": muons,
                                                     "genWeight": np.ones(n)}, basket=500)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 3
    raw[middle:middle + 20_000] = bytes(20_000)
    path.write_bytes(bytes(raw))

    data = default_config_dict(1_000)
    data.pop("generate")
    for s in data["samples"].values():
        s["files"] = [str(path)]
    messages = []
    dask = {"kind": "dask", "address": cluster.scheduler_address}
    for executor, streaming in ((None, "auto"), (dask, "auto"), (dask, True)):
        if executor:
            data["executor"] = executor
        data["streaming"] = streaming
        with pytest.raises(DataError) as err:
            Analysis(load_dict(data, source="damaged"), tmp_path, progress=False).close()
        messages.append(str(err.value))
    assert all(m.startswith(f"{path}: branch ") and "cannot be read at entries" in m
               for m in messages), messages


def test_executor_option_errors(tmp_path, capsys):
    from conftest import write_config

    from diffana.cli import main

    path = write_config(tmp_path / "c.yaml", default_config_dict(1_000))
    assert main(["run", str(path), "--executor", "dask", "--engine", "awkward",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--executor dask needs engine: compiled" in err
    assert main(["run", str(path), "--workers", "0", "--out", str(tmp_path / "run")]) == 2
    assert "--executor: " in capsys.readouterr().err


# --- streamed on the workers ------------------------------------------------------------------


def _close(a, b, tol=1e-12):
    """Equal to ``tol`` relative to the largest magnitude (a gradient has components near 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(np.abs(b).max(), 1e-300))


def _first_step(ana):
    p0 = ana.initial_params()
    u0 = ana.to_unit(p0) * 0.9 + 0.03
    loss, grad = ana.loss_and_grad(u0, p0)
    return float(loss), np.asarray(grad)


def test_dask_streamed_equals_in_memory_and_local_streamed(cluster, local):
    dask = {"kind": "dask", "address": cluster.scheduler_address}
    streamed = Analysis(config(dask, streaming=True), ROOT / "configs", progress=False)
    held = Analysis(config(dask, streaming=False), ROOT / "configs", progress=False)
    alone = Analysis(config(streaming=True), ROOT / "configs", progress=False)
    try:
        assert type(streamed.executor).__name__ == "DaskStreamedExecutor"
        assert streamed.streaming == {"streamed": True,
                                      "why": "streamed on the Dask workers: streaming: true"}
        assert type(held.executor).__name__ == "DaskExecutor"
        assert streamed.executor.tasks == len(streamed.executor.parts) == 2  # one per worker
        assert ({n: s.n_events for n, s in streamed.samples.items()}
                == {n: s.n_events for n, s in held.samples.items()})
        first = {name: _first_step(a) for name, a in
                 (("streamed", streamed), ("held", held), ("alone", alone))}
        # the first step read every work item once and wrote each part's cache entry
        read = streamed.executor.parts_read()
        assert sorted(read) == [0, 1] and read[0]["worker"] != read[1]["worker"]
        assert all(r["cache_complete"] and (Path(r["cache"]) / "manifest.json").is_file()
                   for r in read.values())
        items = {k: r["items_read"] for k, r in read.items()}
        # (an earlier test of the session may have written the same entries: then none is read)
        assert sum(items.values()) > 0 or all(r["cached_first_pass"] for r in read.values())
        # later steps map the cache: no file is read again
        last = {name: steps(a) for name, a in
                (("streamed", streamed), ("held", held), ("alone", alone))}
        assert {k: r["items_read"] for k, r in streamed.executor.parts_read().items()} == items
        p0 = streamed.initial_params()
        objectives = {name: float(a.objective(p0)) for name, a in
                      (("streamed", streamed), ("held", held), ("alone", alone))}
        hard = streamed.hard_objective(p0), held.hard_objective(p0)
        for other in ("held", "alone"):
            _close(first["streamed"][0], first[other][0])
            _close(first["streamed"][1], first[other][1])
            _close(last["streamed"][0], last[other][0])
            _close(last["streamed"][1], last[other][1])
            _close(objectives["streamed"], objectives[other])
        _close(last["streamed"][1], local[1])
        _close(*hard)
    finally:
        for a in (streamed, held, alone):
            a.close()


def _worker_bytes(dask_worker) -> int:
    """The bytes of the arrays a worker holds in its data store (chunks, results)."""
    import jax

    leaves = jax.tree_util.tree_leaves(list(dask_worker.data.values()))
    return sum(getattr(leaf, "nbytes", 0) for leaf in leaves)


def test_a_streaming_worker_holds_no_chunk_between_steps(cluster):
    """In memory each worker holds the chunks of its items; streamed, none between steps (only
    each part's first-pass record), and the chunks read ahead within a step are as many as
    ``prefetch`` (fewer where the worker's ``memory_limit`` holds fewer)."""
    client = distributed.Client(cluster)
    dask = {"kind": "dask", "address": cluster.scheduler_address}
    held = Analysis(config(dask, streaming=False), ROOT / "configs", progress=False)
    _first_step(held)
    try:
        in_memory = sum(client.run(_worker_bytes).values())
    finally:
        held.close()
    assert in_memory > 500_000  # the chunks of 5 000 events
    for updates, depth in (({"prefetch": 1, "chunk_size": 512}, 1),
                           ({"memory_limit": "100kB", "chunk_size": 512}, 0)):
        ana = Analysis(config(dask, streaming=True, **updates), ROOT / "configs",
                       progress=False)
        try:
            _first_step(ana)
            assert sum(client.run(_worker_bytes).values()) < 10_000
            read = ana.executor.parts_read()
            assert all(r["prefetch_depth"] == depth and r["chunks"] > depth + 1
                       for r in read.values()), read
        finally:
            ana.close()
    client.close()


def test_a_later_run_maps_the_workers_cache_and_a_touched_file_is_read_again(cluster,
                                                                           copied_inputs):
    folder, data = copied_inputs
    data["executor"] = {"kind": "dask", "address": cluster.scheduler_address}

    def run():
        ana = Analysis(load_dict(data, source="cache"), folder, progress=False)
        try:
            return _first_step(ana), ana.executor.parts_read()
        finally:
            ana.close()

    first, read = run()
    assert all(not r["cached_first_pass"] and r["items_read"] for r in read.values())
    again, read = run()  # the same files: every part from its cache, no file read
    assert all(r["cached_first_pass"] and r["items_read"] == 0 for r in read.values()), read
    assert again[0] == first[0]  # the same chunks, bit for bit
    np.testing.assert_array_equal(again[1], first[1])
    path = folder / "wjets.root"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched, read = run()
    # every part has wjets entries: each reads its files again, into a new entry
    assert all(not r["cached_first_pass"] and r["items_read"] for r in read.values()), read
    assert touched[0] == first[0]
    np.testing.assert_array_equal(touched[1], first[1])


@pytest.mark.parametrize("updates,streamed,why", [
    ({"streaming": True}, True, "streamed on the Dask workers: streaming: true"),
    ({"streaming": False}, False, "in memory on the Dask workers: streaming: false"),
    ({"memory_limit": "100kB"}, True, "streamed on the Dask workers: the events need about"),
    ({}, False, "in memory on the Dask workers: the events need about"),
])
def test_the_choice_on_dask_says_why(updates, streamed, why):
    from diffana.events import SampleReader
    from diffana.executors import choose, streaming_choice
    from diffana.generate import ensure_generated
    from diffana.plan import build

    cfg = config({"kind": "dask"}, **updates)
    g = cfg.generate
    generated = ensure_generated(g.kind, g.events, g.seed, progress=None)
    plan = build(cfg)
    readers = [SampleReader(cfg, n, plan, ROOT / "configs", generated) for n in cfg.samples]
    choice = streaming_choice(cfg, cfg.engine, readers, plan)
    assert choice.streamed is streamed and choice.why.startswith(why), choice
    name = "DaskStreamedExecutor" if streamed else "DaskExecutor"
    assert choose(cfg, cfg.engine, choice.streamed).__name__ == name


def test_a_part_without_events_adds_nothing(cluster, tmp_path, monkeypatch):
    """A part per work item, one of them preselected away entirely: the same numbers as in
    memory (the part's task adds nothing)."""
    import awkward as ak

    from diffana.executors.dask_streamed import DaskStreamedExecutor

    rng = np.random.default_rng(2)
    n, empty = 3000, 1024
    counts = np.where(np.arange(n) < empty, 0, 5)  # the first range: no jets, none kept
    jets = ak.zip({"pt": ak.unflatten(rng.uniform(20, 200, counts.sum()), counts),
                   "eta": ak.unflatten(rng.uniform(-2.5, 2.5, counts.sum()), counts),
                   "btagCSVV2": ak.unflatten(rng.uniform(0, 1, counts.sum()), counts)})
    muons = ak.zip({f: ak.unflatten(rng.uniform(20, 100, n), np.ones(n, int))
                    for f in ("pt", "eta", "phi", "mass")})
    path = write_events(tmp_path / "wjets.root", {"Jet": jets, "Muon": muons,
                                                   "genWeight": np.ones(n)})
    data = default_config_dict(5_000)
    data["samples"]["wjets"]["files"] = [str(path)]
    data.update(chunk_size=1024, gradient="forward", preselect=True)
    data["executor"] = {"kind": "dask", "address": cluster.scheduler_address}
    monkeypatch.setattr(DaskStreamedExecutor, "parts_per_worker", 100)
    results = []
    for streaming in (False, True):
        ana = Analysis(load_dict({**data, "streaming": streaming}, source="empty"),
                       ROOT / "configs", progress=False)
        try:
            results.append(_first_step(ana))
            if streaming:
                assert ana.executor.tasks == 1 + 3  # ttbar's range and the three of wjets
                assert len(ana.executor.parts_read()) == 3  # the empty one streams nothing
        finally:
            ana.close()
    _close(results[1][0], results[0][0])
    _close(results[1][1], results[0][1])
