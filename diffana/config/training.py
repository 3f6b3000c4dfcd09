"""The configuration blocks of learning: held-out events (``split``) and where a run starts
(``init``)."""

from __future__ import annotations

from pydantic import ConfigDict, Field, StrictInt

from diffana.config.values import Number, StrictModel


class Split(StrictModel):
    """Held-out events: each event is a training or a test event, by a hash of its file's
    name and entry number (the same however the files are chunked; see
    :mod:`diffana.split`). The optimiser sees the training events (weights × 1/(1 − f)),
    the hard evaluations the test events (weights × 1/f).
    """

    # the fraction f of the events held out for testing, in (0, 1)
    test_fraction: Number = Field(0.5, gt=0, lt=1)
    # seeds the hash that assigns each event to its part
    seed: StrictInt = 0


class Init(StrictModel):
    """Where a run starts: the final parameters of another run (its directory, relative to
    this file): every scalar parameter both runs have, and each network's weights and input
    standardisation (the same shape), so that a network trained in one run (e.g. as a
    classifier) is fine-tuned in the next.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              serialize_by_alias=True)

    # the run directory whose final parameters (parameters.npz or results.json) start this run
    from_: str = Field(alias="from")
