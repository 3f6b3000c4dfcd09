"""Work beside the optimiser: what a run evaluates at its initial cuts, in a thread while
the optimiser steps (:class:`Initial`)."""

from __future__ import annotations

import threading

from diffana import inference, outputs, tables
from diffana.log import logger


def at_initial_cuts(ana, p0: dict) -> dict:
    """``{"hists", "objective", "cutflow", "workspace"}``: the hard histograms, the hard
    objective, the cutflow and the hard-cut workspace (:func:`~diffana.outputs.hard_workspace`)
    at the initial cuts ``p0`` (in :class:`Initial`'s thread, or after the last step where it
    gave nothing)."""
    hists = ana.hard_histograms(p0)
    return {"hists": hists, "objective": ana.hard_objective(p0, hists),
            "cutflow": tables.cutflow(ana, p0),
            "workspace": outputs.hard_workspace(ana, hists, p0, ana.pseudodata(hists))}


class Initial:
    """The hard-cut evaluations at the initial cuts, in a thread while the optimiser steps.

    They do not depend on the optimisation, and the thread compiles what the final ones need
    meanwhile: the hard histograms and objective, the yields' Jacobian (and, where no
    compiled step gives it, the objective's gradient in the yields) by taking the sensitivity
    at the initial cuts, and the inference's best fit by fitting the initial cuts' hard
    workspace once. Those compilations then overlap the fused step's and the steps instead of
    following them (the AGC from an empty cache: benchmarks/README.md, ``job.py``). Only
    where the executor allows a second thread (``alongside``: the events in memory);
    elsewhere, and after any error in the thread (the main thread evaluates again and says
    what failed), :meth:`wait` gives nothing.
    """

    def __init__(self, ana, p0: dict):
        self.values: dict = {}
        self._thread = None
        self._stopped = False
        if ana.executor.alongside:
            self._thread = threading.Thread(target=self._evaluate, args=(ana, p0),
                                            name="diffana-initial", daemon=True)
            self._thread.start()

    def _evaluate(self, ana, p0: dict) -> None:
        try:
            self.values = at_initial_cuts(ana, p0)
            if ana.trainable and not ana.objective_spec.of_events and not self._stopped:
                ana.sensitivity(p0)  # compiled now for the final cuts'
            if ana.cfg.inference.enabled and not self._stopped:  # and the inference's fit
                inference.prepare(self.values["workspace"], **inference.settings(ana.cfg))
        except Exception as err:  # noqa: BLE001 - the main thread evaluates what is missing
            logger.debug("evaluation at the initial cuts in a thread failed: %s", err)

    def stop(self) -> None:
        """Let the thread end after the call it is in (at most one compilation), and wait for
        it: a process must not exit while a thread is inside XLA (at the interpreter's exit
        a daemon thread is unwound there, and the process aborts)."""
        self._stopped = True
        self.wait()

    def wait(self) -> dict:
        """:func:`at_initial_cuts`, or ``{}``."""
        if self._thread is not None:
            self._thread.join()
        return self.values
