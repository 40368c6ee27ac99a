"""Apply batches through a pipeline of stages, one thread each, so decoding the next batch
and writing the previous ones overlap.

Every batch passes every stage, in submission order (stage 1 may write batch N+1 while
stage 2 writes batch N; a later stage may rely on what an earlier one did to the batch).
Between two stages, and before the first, at most one batch waits (back-pressure on the
reader). `applied` is the end LSN of the last batch that every stage has finished: the
only position the stream may acknowledge. A failure in any stage is kept, stops the
pipeline, and is re-raised to the submitting thread at its next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from cdc.apply import interpreter
from cdc.apply.batch import Batch
from cdc.protocol.lsn import Lsn

_STOP = None
Stage = Callable[[Batch], None]


class Applier:
    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("an applier needs at least one stage")
        self.applied = Lsn.ZERO
        self.error: BaseException | None = None
        self._interpreter = interpreter.tune()  # restored by close()
        self._queues: list[queue.Queue[Batch | None]] = [queue.Queue(maxsize=1) for _ in stages]
        self._threads = [
            threading.Thread(
                target=self._run, args=(index, stage), name=f"cdc-apply-{index + 1}", daemon=True
            )
            for index, stage in enumerate(stages)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int, stage: Stage) -> None:
        inbox = self._queues[index]
        outbox = self._queues[index + 1] if index + 1 < len(self._queues) else None
        while True:
            batch = inbox.get()
            try:
                if batch is _STOP:
                    if outbox is not None:
                        outbox.put(_STOP)
                    return
                if self.error is None:
                    stage(batch)
                    if outbox is None:
                        self.applied = batch.end_lsn
                    elif self.error is None:
                        self._hand_on(outbox, batch)
            except BaseException as exc:  # noqa: BLE001 - raised again by the caller (`check`)
                self.error = exc
            finally:
                inbox.task_done()

    def _hand_on(self, outbox: queue.Queue[Batch | None], batch: Batch) -> None:
        """Pass `batch` to the next stage, giving up if the pipeline failed meanwhile."""
        while self.error is None:
            try:
                outbox.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, batch: Batch) -> None:
        while True:
            self.check()
            try:
                self._queues[0].put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def drain(self) -> None:
        """Wait until everything submitted has passed every stage (or failed)."""
        for inbox in self._queues:
            inbox.join()
        self.check()

    def close(self) -> None:
        self._queues[0].put(_STOP)
        for thread in self._threads:
            thread.join()
        self._interpreter.restore()
