"""The figure process: a child interpreter that calls diffana's functions one at a time, says
what they raised, and tells a child that is gone from one that answers."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from diffana import plot
from diffana.exceptions import DiffanaError
from diffana.figure_process import MODE, FigureProcess


@pytest.fixture(scope="module")
def shared():
    process = FigureProcess()  # each start imports JAX and matplotlib: ~2 s
    yield process
    process.close()


@pytest.fixture
def child():
    process = FigureProcess()
    yield process
    process.close()


def test_calls_in_the_child_give_what_they_give_here(shared):
    args = (np.array([1.0, 1.3]), np.array([0.1, 0.2]), np.array([0.05, 0.1]))
    assert shared.call(plot.ratio_range, *args) == plot.ratio_range(*args)


def test_what_the_child_raises_is_raised_here_and_it_answers_on(shared):
    with pytest.raises(KeyError, match="measurements"):  # not a workspace
        shared.call(plot.systematic_band, {})
    assert shared.call(plot.ratio_range, [1.0], [0.0], [0.0]) == (0.8, 1.2)


def test_only_functions_found_under_their_name_go_to_the_child():
    assert FigureProcess.takes(plot.templates)
    assert not FigureProcess.takes(lambda: None)
    assert not FigureProcess.takes(np.sum)  # not diffana's


def test_a_child_that_is_gone_is_an_error_not_a_hang(child):
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(DiffanaError, match="figure process stopped while drawing ratio_range"):
        child.call(plot.ratio_range, [1.0], [0.0], [0.0])


def test_closing_lets_the_child_exit(child):
    assert child.close() == 0


def test_the_mode_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv(MODE, "thread")
    assert FigureProcess.start() is None
    monkeypatch.setenv(MODE, "threads")
    with pytest.raises(DiffanaError, match="DIFFANA_FIGURES='threads': expected 'process' or"):
        FigureProcess.start()


def test_a_run_draws_each_figure_in_the_next_free_figure_process():
    """Drawing sends each figure to a figure process free at that moment, the two at once,
    where the process takes it, and draws the others (a stand-in, or without processes) in
    the run's own process."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from diffana.outputs import Drawing

    both = threading.Barrier(2, timeout=30)  # broken (an error) unless two draw at once

    class Recording:
        def __init__(self):
            self.calls = []

        takes = staticmethod(FigureProcess.takes)

        def call(self, draw, *args):
            self.calls.append(draw.__qualname__)
            both.wait()
            return draw(*args)

    processes = [Recording(), Recording()]
    here = []
    with ThreadPoolExecutor(2) as pool:
        figures = Drawing(pool, processes)
        figures.submit(plot.ratio_range, [1.0], [0.0], [0.0])
        figures.submit(plot.ratio_range, [1.0], [0.0], [0.0])
        figures.submit(here.append, "stand-in")
        figures.wait()
    assert [p.calls for p in processes] == [["ratio_range"], ["ratio_range"]]
    assert here == ["stand-in"]
    with ThreadPoolExecutor(1) as only:
        figures = Drawing(only)  # DIFFANA_FIGURES=thread: every figure in this thread
        figures.submit(here.append, "threaded")
        figures.wait()
    assert here == ["stand-in", "threaded"]


def test_once_the_process_is_gone_the_figure_is_drawn_here(tmp_path):
    """A figure process that died (killed, out of memory) costs no figure: what was sent to
    it is drawn in the run's own process."""
    from concurrent.futures import ThreadPoolExecutor

    from diffana import report
    from diffana.outputs import Drawing

    process = FigureProcess()
    os.kill(process.pid, signal.SIGKILL)
    try:
        with ThreadPoolExecutor(1) as pool:
            figures = Drawing(pool, [process])
            figures.submit(report.write_json, tmp_path / "drawn.json", {"a": 1})
            figures.wait()
    finally:
        process.close()
    assert (tmp_path / "drawn.json").read_text().startswith("{")
