"""What every executor starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffana.events import SampleReader
from diffana.stages import Kernel
from diffana.stats.objective import Objective


@dataclass
class Setup:
    """The analysis as an executor receives it.

    ``sets[g]`` is event set ``g``: an :class:`~diffana.events.EventSet` (events in memory)
    or a :class:`~diffana.events.StreamedSet` (events in the files; the executor counts
    them into ``n_events``); ``set_index[(sample reader's name, set key)]`` is ``g``.
    ``kernel`` has no chunk layout yet: the executor finds it.
    """

    kernel: Kernel
    objective: Objective
    readers: list[SampleReader]
    sets: list
    set_index: dict
    device: object
    base: Path
    progress: bool
