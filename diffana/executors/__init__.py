"""Executors: where and how the stages run over the events, behind one protocol.

================  ==================================================================
``held``          compiled engine, events lowered once and held in memory as stacked
                  chunks; gradients fused (one ``lax.scan``), forward or reverse
``streamed``      compiled engine, chunks read and lowered from the files (or taken
                  from the lowered-chunk cache) on every evaluation, read ahead in a
                  thread (``streaming: true``, or ``auto`` when the events do not fit
                  ``memory_limit``: :func:`streaming_choice`): memory bounded by a
                  few chunks
``dask``          compiled engine, chunks lowered once and held on Dask workers
                  (``executor: {kind: dask}``); each step maps over them
``dask_streamed`` compiled engine on Dask workers, streamed: each worker streams its
                  own part of the files every step, read ahead, from its own
                  lowered-chunk cache after the first (``executor: {kind: dask}`` with
                  ``streaming: true``, or ``auto`` as above)
``awkward``       the awkward engine: JAX-backed Awkward arrays, eager
================  ==================================================================

Each is a class with the methods of :class:`Executor`. An executor receives a
:class:`Setup` (the compiled stage functions' static :class:`~diffana.stages.Kernel`, the
objective, the sample readers and event sets) and never reaches back into the
:class:`~diffana.analysis.Analysis` that made it. The executor owns the choice of gradient
mode. A new execution mode is one module here plus a line in :data:`EXECUTORS` and
:func:`choose`.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from diffana.config import AnalysisConfig, chunked_evaluation_conflict
from diffana.exceptions import ConfigError
from diffana.executors.awkward import AwkwardExecutor
from diffana.executors.choice import StreamingChoice, streaming_choice
from diffana.executors.held import HeldExecutor
from diffana.executors.setup import Setup
from diffana.executors.streamed import StreamedExecutor

__all__ = ["EXECUTORS", "Executor", "Setup", "StreamingChoice", "choose", "streaming_choice"]


class Executor(Protocol):
    """What the analysis asks of an executor."""

    #: whether the analysis reads the events into memory for it (``Setup.sets`` holds
    #: :class:`~diffana.events.EventSet`) or leaves them in the files
    #: (:class:`~diffana.events.StreamedSet`, counted by the executor's first pass)
    holds_events: ClassVar[bool]
    #: whether its evaluations may run in a second thread while the optimiser steps (the
    #: events in memory and read only; a streamed or Dask pass holds state of its own)
    alongside: ClassVar[bool]

    @property
    def gradient_mode(self) -> str:
        """``fused``, ``forward`` or ``reverse``: how :meth:`loss_and_grad` differentiates."""

    def yields(self, params: dict) -> dict:
        """KDE yields ``[region][sample] = {"nominal", "sumw2"}``, differentiable."""

    def yields_and_jacobian(self, params: dict) -> tuple[dict, dict]:
        """Yields and ``∂yields/∂θ`` of the trainable parameters."""

    def objective(self, params: dict):
        """The soft objective at ``params``."""

    def input_moments(self, params: dict) -> dict:
        """``{group: (Σw, Σw·x, Σw·x²)}`` of each network's input observables over the
        training events after the top-level soft selection (its standardisation)."""

    def loss_and_grad(self, u, params_fixed: dict):
        """The loss and its gradient in unit-box coordinates."""

    def loss_gradient_in_yields(self, params: dict) -> dict | None:
        """``∂loss/∂yields[region][sample] = {"nominal", "sumw2"}`` at ``params`` where a
        function compiled for the steps gives it (the fused step: no other compilation for
        the sensitivity); else None."""

    def event_parts(self, params: dict, hard: bool, part: str | None = None):
        """``(set, {region: (x, W)})`` for all events, in parts; ``part``: the events
        weighed where the configuration has a ``split`` (default: the training events)."""

    def classifier_sums(self, params: dict, hard: bool, part: str = "test") -> dict:
        """A ``binary_cross_entropy`` objective's sums per nominal sample, ``(Σw·(−log s),
        Σw·(−log(1 − s)), Σw)``, of the events of ``part`` (``hard``: hard cuts)."""

    def hard_histograms(self, params: dict, samples: list[str], part: str = "test") -> dict:
        """Hard cuts filled into ``hist`` histograms ``[region][sample]``, of the test
        events where the configuration has a ``split`` (``part``: ``train``, ``test`` or
        ``all``; without a split, all events whatever ``part``)."""

    def cutflow_parts(self, params: dict):
        """``(set, weighted and raw events after each cutflow step)``, each
        ``(steps, 2, events)``, for all events in parts; None where the events are elsewhere."""

    def close(self) -> None:
        """Let go of what the executor started (a Dask cluster)."""


def _dask(streamed: bool = False):
    # optional extra: dask[distributed] is imported only when a configuration asks for it
    try:
        from diffana.executors.dask import DaskExecutor
        from diffana.executors.dask_streamed import DaskStreamedExecutor
    except ImportError as err:
        if (err.name or "").partition(".")[0] not in ("dask", "distributed"):
            raise
        raise ConfigError(f"executor: dask needs the optional dependency dask[distributed] "
                          f"({err.name} is not installed): pip install \"diffana[dask]\""
                          ) from None
    return DaskStreamedExecutor if streamed else DaskExecutor


EXECUTORS = {"held": lambda: HeldExecutor, "streamed": lambda: StreamedExecutor,
             "dask": _dask, "dask_streamed": lambda: _dask(streamed=True),
             "awkward": lambda: AwkwardExecutor}


def choose(cfg: AnalysisConfig, engine: str, streamed: bool | None = None) -> type:
    """The executor class of a configuration (and engine); ``streamed``: what
    :func:`streaming_choice` chose (default: ``streaming: true`` streams, ``auto`` does not).

    Raises:
        ConfigError: ``streaming: true`` (a ``--streaming true`` too) with ``gradient:
            fused``, which holds every chunk at once (``auto`` holds the events instead).
    """
    if (cfg.streaming is True and engine != "awkward"
            and chunked_evaluation_conflict(engine, cfg.gradient) == "gradient"):
        raise ConfigError("streaming: true needs gradient: auto, forward or reverse (got "
                          "gradient: fused, which holds every chunk at once)")
    streams = (cfg.streaming is True) if streamed is None else streamed
    if engine == "awkward" and cfg.objective.kind == "binary_cross_entropy":
        raise ConfigError("objective.kind: binary_cross_entropy needs engine: compiled (the "
                          "awkward engine histograms, it sums no per-event loss)")
    if engine == "awkward":
        name = "awkward"
    elif cfg.executor.kind == "dask":
        name = "dask_streamed" if streams else "dask"
    else:
        name = "streamed" if streams else "held"
    return EXECUTORS[name]()
