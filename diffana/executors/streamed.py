"""The compiled engine streaming: every evaluation reads and lowers the chunks again.

Memory is bounded by a chunk whatever the number of events (``streaming: true``). A first
pass over the files counts the events of each set and finds the chunk shape.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from diffana import ragged
from diffana.chunks import lower_sets, one_set_chunk, single_set_layout
from diffana.executors.chunked import ChunkedExecutor, sum_over
from diffana.executors.setup import Setup
from diffana.stages import jit_cutflow, jit_events


def region_parts(kernel, chunks, params: dict, hard: bool):
    """``(set, {region: (x, W)})`` of each ``(set, events, device chunk)``."""
    for g, n, chunk in chunks:
        yield g, {r: (x[:n], w[:, :n]) for r, (x, w)
                  in jit_events(kernel, params, chunk, hard).items()}


class StreamedExecutor(ChunkedExecutor):
    """Chunks of one event set each, read from the files on every evaluation."""

    def __init__(self, setup: Setup):
        super().__init__(setup)
        cfg = self.kernel.cfg
        sizes = []
        total = sum(sum(r.entries) for r in setup.readers)
        with tqdm(total=total, desc="first pass", unit="ev", disable=not setup.progress,
                  leave=False) as bar:
            for g, buffers in self._lowered(progress=bar.update):
                setup.sets[g].n_events += len(buffers["weight"])
                sizes.append(ragged.axis_sizes(buffers, self.kernel.plan))
        self.kernel = self.kernel.with_layout(single_set_layout(sizes, cfg.chunk_size, cfg.name))

    def _lowered(self, progress=None):
        """``(set, lowered buffers)`` of each chunk read from the files."""
        plan, index = self.kernel.plan, self.setup.set_index
        for reader in self.setup.readers:
            reader.check_unchanged()  # read again every pass: the files must be the same
            for n_read, sets in reader.chunks(self.kernel.cfg.chunk_size):
                yield from lower_sets(plan, index, reader.name, sets)
                if progress is not None:
                    progress(n_read)

    def _chunks(self):
        """``(set, events, device chunk)`` of each chunk, read and lowered while the previous
        chunk is computed (one chunk ahead, in a thread: uproot, Awkward and XLA release the GIL)."""
        lowered = self._lowered()
        kernel, n_sets = self.kernel, len(self.kernel.groups)

        def produce():
            item = next(lowered, None)
            return None if item is None else one_set_chunk(
                kernel.layout, kernel.plan, *item, n_sets, self.setup.device, kernel.cfg.name)

        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(produce)
            while (item := ahead.result()) is not None:
                ahead = pool.submit(produce)
                yield item

    def map_reduce(self, name: str, args: tuple):
        return sum_over(name, self.kernel, args, (chunk for _, _, chunk in self._chunks()))

    def event_parts(self, params: dict, hard: bool):
        yield from region_parts(self.kernel, self._chunks(), params, hard)

    def cutflow_parts(self, params: dict):
        for g, n, chunk in self._chunks():
            yield g, jit_cutflow(self.kernel, params, chunk)[..., :n]
