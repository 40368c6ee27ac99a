"""Apply batches through a pipeline of stages, one thread each, so decoding the next batch
and writing the previous ones overlap.

Every batch passes every stage, in submission order (stage 1 may write batch N+1 while
stage 2 writes batch N; a later stage may rely on what an earlier one did to the batch).
Before the first stage at most one batch waits (back-pressure on the reader); a stage
hands a batch on to the next one directly, none waits between two stages: the pipeline
holds one batch per stage and the one submitted, whatever the number of stages.
`applied` is the end LSN of the last batch that every stage has finished: the only
position the stream may acknowledge. A failure in any stage is kept, stops the pipeline,
and is re-raised to the submitting thread at its next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from cdc.apply import interpreter
from cdc.apply.batch import Batch
from cdc.protocol.lsn import Lsn

_STOP = None
_POLL_S = 0.2  # how often a blocked hand-over looks for a failure of the pipeline
Stage = Callable[[Batch], None]


class _Handoff:
    """The link between two stages: `put` returns once the next stage has taken the batch
    (or `give_up` says the pipeline failed). `task_done` and `join` as `queue.Queue`'s."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: list[Batch | None] = []  # the one being handed over
        self._unfinished = 0

    def put(self, item: Batch | None, give_up: Callable[[], bool] = lambda: False) -> None:
        with self._changed:
            self._held.append(item)
            self._unfinished += 1
            self._changed.notify_all()
            while self._held and not give_up():
                self._changed.wait(_POLL_S)

    def get(self) -> Batch | None:
        with self._changed:
            while not self._held:
                self._changed.wait()
            item = self._held.pop()
            self._changed.notify_all()
            return item

    def task_done(self) -> None:
        with self._changed:
            self._unfinished -= 1
            self._changed.notify_all()

    def join(self) -> None:
        with self._changed:
            while self._unfinished:
                self._changed.wait()


class Applier:
    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("an applier needs at least one stage")
        self.applied = Lsn.ZERO
        self.error: BaseException | None = None
        self._interpreter = interpreter.tune()  # restored by close()
        self._submitted: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._links = [_Handoff() for _ in stages[1:]]
        self._threads = [
            threading.Thread(
                target=self._run, args=(index, stage), name=f"cdc-apply-{index + 1}", daemon=True
            )
            for index, stage in enumerate(stages)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int, stage: Stage) -> None:
        inbox = self._links[index - 1] if index else self._submitted
        outbox = self._links[index] if index < len(self._links) else None
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
                        outbox.put(batch, give_up=lambda: self.error is not None)
            except BaseException as exc:  # noqa: BLE001 - raised again by the caller (`check`)
                self.error = exc
            finally:
                inbox.task_done()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, batch: Batch, waiting: Callable[[], None] | None = None) -> None:
        """Hand `batch` to the first stage once it takes it; `waiting` is called every
        `_POLL_S` meanwhile (the reader keeps its replication session alive)."""
        while True:
            self.check()
            try:
                self._submitted.put(batch, timeout=_POLL_S)
                return
            except queue.Full:
                if waiting is not None:
                    waiting()

    def drain(self) -> None:
        """Wait until everything submitted has passed every stage (or failed)."""
        self._submitted.join()
        for link in self._links:
            link.join()
        self.check()

    def close(self) -> None:
        self._submitted.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._interpreter.restore()
