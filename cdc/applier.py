"""Apply batches on a thread of their own, so decoding the next batch overlaps the writes.

One batch is applied at a time, in submission order; at most one more waits in the queue
(back-pressure on the reader). `applied` is the end LSN of the last batch every sink holds
durably: the only position the stream may acknowledge. A failure is kept and re-raised to
the submitting thread at its next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from cdc.batch import Batch
from cdc.lsn import Lsn

_STOP = None


class Applier:
    def __init__(self, apply: Callable[[Batch], None]) -> None:
        self._apply = apply
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self.applied = Lsn.ZERO
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cdc-applier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is _STOP:
                    return
                if self.error is None:
                    self._apply(batch)
                    self.applied = batch.end_lsn
            except BaseException as exc:
                self.error = exc
            finally:
                self._queue.task_done()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, batch: Batch) -> None:
        while True:
            self.check()
            try:
                self._queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def drain(self) -> None:
        """Wait until everything submitted is applied (or failed)."""
        self._queue.join()
        self.check()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
