"""Random-access batches: batch k is a pure function of (seed, k), so resuming costs nothing.

Rows are example indices in a seeded per-epoch permutation, epochs following each other without a
break; each row is built by a `make_row(example, rng)` whose generator is seeded by (seed, epoch,
example), so anything random about a row (masking, sentence pairing) is fixed by the seed too.
In a multi-process run every process builds only its contiguous block of each global batch, the
block `jax.make_array_from_process_local_data` expects from it.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from jaxlm.errors import DataError

Row = dict[str, np.ndarray]


class IndexedBatches:
    """Batches of rows made by `make_row(example_index, rng)` over `num_examples` examples.

    Training (`repeat=True`) runs forever over shuffled epochs. Evaluation (`repeat=False`) visits
    every example once in order; the last batch is filled up with copies of example 0 whose
    `weight_keys` are zeroed, so that every example counts exactly once.
    """

    def __init__(
        self,
        num_examples: int,
        make_row: Callable[[int, np.random.Generator], Row],
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        repeat: bool = True,
        weight_keys: tuple[str, ...] = ("weights",),
        process_index: int = 0,
        process_count: int = 1,
    ):
        if num_examples <= 0:
            raise DataError("no examples to make batches from")
        if batch_size % process_count:
            raise DataError(
                f"batch size {batch_size} is not divisible by the {process_count} processes"
            )
        self.num_examples, self.make_row = num_examples, make_row
        self.batch_size, self.seed = batch_size, seed
        self.shuffle, self.repeat, self.weight_keys = shuffle, repeat, weight_keys
        self.local_size = batch_size // process_count
        self.first_row = process_index * self.local_size
        self._epoch, self._order = -1, np.arange(num_examples)

    def __len__(self) -> int:
        """Batches in one pass over the examples (the last one partial when not repeating)."""
        if self.repeat:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def _example(self, position: int) -> tuple[int, int]:
        """(epoch, example index) of a position in the endless stream of rows."""
        epoch, offset = divmod(position, self.num_examples)
        if self.shuffle and epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return epoch, int(self._order[offset])

    def batch(self, k: int) -> Row:
        """This process's rows of global batch `k`."""
        rows = []
        for row in range(self.first_row, self.first_row + self.local_size):
            position = k * self.batch_size + row
            padding = not self.repeat and position >= self.num_examples
            epoch, example = self._example(0 if padding else position)
            built = self.make_row(example, np.random.default_rng([self.seed, epoch, example]))
            if padding:
                built = {**built, **{key: np.zeros_like(built[key]) for key in self.weight_keys}}
            rows.append(built)
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def batches(self, start: int = 0) -> Iterator[Row]:
        """Batches `start`, `start + 1`, ... (forever when repeating)."""
        stop = None if self.repeat else len(self)
        k = start
        while stop is None or k < stop:
            yield self.batch(k)
            k += 1


def prefetch(batches: Iterator[Row], size: int = 2) -> Iterator[Row]:
    """Iterates `batches` in a background thread, keeping up to `size` batches ready."""
    ready: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                ready.put(batch)
            ready.put(done)
        except BaseException as error:  # handed to the consumer, raised there
            ready.put(error)

    threading.Thread(target=produce, daemon=True).start()
    while (item := ready.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
