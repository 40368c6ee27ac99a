"""Batches completed from the historic copy and not yet written to it: `Unwritten`.

The applier completes a batch (fills the values the stream did not resend) while the
batches before it are still being written, so reading and writing historic overlap. A
batch's rows are then filled from the latest image of their key in those batches (exactly
what historic holds once they are written), else from historic, which no batch in flight
touches for that key (`cdc.sinks.historic.fill`). What must see the earlier batches
written first (the tables or columns a batch adds) waits for them (`wait_written`).
"""

from __future__ import annotations

import threading

from cdc.apply.batch import Batch


class Unwritten:
    """Thread-safe: completed on one stage's thread, written on the next one's."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._batches: list[Batch] = []
        self._failed = False

    def batches(self) -> tuple[Batch, ...]:
        """The batches completed and not yet written, oldest first."""
        with self._changed:
            return tuple(self._batches)

    def add(self, batch: Batch) -> None:
        """`batch` is complete; historic does not hold it yet."""
        with self._changed:
            self._batches.append(batch)

    def written(self, batch: Batch) -> None:
        """Historic holds `batch` (committed)."""
        with self._changed:
            self._batches = [b for b in self._batches if b is not batch]
            self._changed.notify_all()

    def failed(self) -> None:
        """The writing stage stopped on an error: it writes no batch from now on (the
        applier skips them), so nothing completed while waiting for it is written."""
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def wait_written(self) -> None:
        """Return once every batch completed so far is written, or the writing failed."""
        with self._changed:
            while self._batches and not self._failed:
                self._changed.wait()
