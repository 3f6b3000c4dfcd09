"""The Dask executor: the same optimisation as locally, a lost worker recovered, the same errors."""

from __future__ import annotations

import logging
import os
import signal

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
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c


def config(executor=None, events=5_000):
    data = default_config_dict(events)
    data.update(chunk_size=1024, gradient="forward")
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


def test_lost_worker_is_recovered(cluster, local, caplog):
    client = distributed.Client(cluster)
    ana = Analysis(config({"kind": "dask", "address": cluster.scheduler_address}),
                   ROOT / "configs", progress=False)
    victim = next(iter(client.run(os.getpid).values()))

    def kill(step, loss, u):
        if step == 2:
            os.kill(victim, signal.SIGKILL)

    try:
        with caplog.at_level(logging.WARNING, logger="diffana"):
            loss, u = steps(ana, on_step=kill)
    finally:
        ana.close()
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
    for executor in (None, {"kind": "dask", "address": cluster.scheduler_address}):
        if executor:
            data["executor"] = executor
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
