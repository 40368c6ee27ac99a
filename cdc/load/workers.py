"""A backfill job's workers: the chunks of one pass copied at its snapshot, in parallel,
while the plan is still finding more.

Each worker copies chunks as a queue hands them out (`cdc.load.chunkcopy`), holds the
rows of a target outside the source database and gives them in one write per table and
`batch_bytes` (ClickHouse makes a part of each insert, and merges small ones); a chunk is
recorded done once every target has its rows. A table whose rows a target cannot hold is
given up (`Progress.failed`); one whose copy cannot be read as it was described is noted
in the job's `changed`, to be described and copied again.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from cdc.errors import Action, CdcError
from cdc.load.chunkcopy import Held
from cdc.load.chunks import Chunk
from cdc.sinks.historic.sql import SESSION_SQL
from cdc.stream.snapshot import Snapshot

if TYPE_CHECKING:
    from cdc.load.backfill import Backfill

# What reading or converting a table's copy raises when its columns changed since it was
# described: a column gone, or data of another type than described (a binary COPY is of
# the columns as they are now): the table is described and copied again.
DESCRIBED_OTHERWISE = (
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedTable,
    psycopg.DataError,  # a value of the new type in a target of the old one (SQLSTATE 22)
    ValueError,  # a binary COPY field of another width than described
)


@dataclass
class Progress:
    """Shared counters; `on_progress` is called (from worker threads) after each chunk."""

    total_chunks: int = 0
    done_chunks: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    failed: dict[str, str] = field(default_factory=dict)  # table: why it cannot be copied
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rows: int) -> None:
        with self.lock:
            self.done_chunks += 1
            self.rows += rows

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-9)


class CopyRun:
    """One pass of `job`'s workers over its chunks at `snapshot`."""

    def __init__(self, job: Backfill, snapshot: Snapshot, total_chunks: int) -> None:
        self.job = job
        self.snapshot = snapshot
        self.progress = Progress(total_chunks=total_chunks)

    def run(
        self, chunks: list[Chunk], plan: Callable[[Callable[[Chunk], None]], None]
    ) -> list[BaseException]:
        """Copy `chunks`, and those `plan` finds meanwhile (it calls its argument with
        each); the failures of the planner and the workers."""
        work: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        for chunk in chunks:
            work.put(chunk)
        workers = max(1, self.job.workers)

        def found(chunk: Chunk) -> None:
            with self.progress.lock:
                self.progress.total_chunks += 1
            work.put(chunk)

        def planner() -> None:
            try:
                plan(found)
            finally:
                for _ in range(workers):
                    work.put(None)  # no more chunks

        failures: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=workers + 1) as pool:
            futures = [pool.submit(planner)]
            futures += [pool.submit(self._work, work) for _ in range(workers)]
            for future in futures:
                if (exc := future.exception()) is not None:
                    failures.append(exc)
        return failures

    def _work(self, work: queue.SimpleQueue[Chunk | None]) -> None:
        """A worker: copy chunks from `work` until it hands out None."""
        job = self.job
        sinks = job.make_sinks()
        held: list[Held] = []
        try:
            with psycopg.connect(job.source_dsn) as source, job.state() as state:
                # Timestamps printed in UTC: half the server's work of printing them in a
                # named zone, and the same instants. Historic copies made in this session
                # compress as the historic sink's do.
                source.execute("SET TimeZone = 'UTC'")
                source.execute(SESSION_SQL)
                source.commit()
                while (chunk := work.get()) is not None:
                    if held and held[0].chunk.table != chunk.table:
                        self._give(source, state, held)
                        held = []
                    if chunk.table in (*self.progress.failed, *job.changed, *job.set_aside):
                        continue
                    try:
                        rows, holding = job.copier.copy(source, sinks, chunk, self.snapshot)
                    except CdcError as exc:
                        self._quarantine(chunk.table, exc)
                        continue
                    except DESCRIBED_OTHERWISE as exc:
                        # Described before a column of it was dropped, renamed or retyped
                        # (or it was dropped): a snapshot does not keep the catalog as it
                        # was, and the copy's data is of the columns as they are now.
                        job.changed[chunk.table] = str(exc).strip()
                        continue
                    if holding is None:
                        self._done(state, chunk, rows)
                        continue
                    held.append(holding)
                    if sum(len(h.rows.data) for h in held) >= job.batch_bytes:
                        self._give(source, state, held)
                        held = []
                if held:
                    self._give(source, state, held)
        finally:
            for sink in sinks:
                sink.close()

    def _quarantine(self, table: str, exc: CdcError) -> None:
        """Stop copying `table`, whose rows a target cannot hold; other errors propagate."""
        if exc.policy.action is not Action.QUARANTINE_TABLE:
            raise exc
        self.progress.failed.setdefault(table, str(exc))

    def _done(self, state: psycopg.Connection[Any], chunk: Chunk, rows: int) -> None:
        self.job.job_state.done(state, chunk, rows, str(self.snapshot.lsn))
        self.progress.add(rows)
        if self.job.on_progress is not None:
            self.job.on_progress(self.progress)

    def _give(
        self, source: psycopg.Connection[Any], state: psycopg.Connection[Any], held: list[Held]
    ) -> None:
        """Give the held chunks' rows (all of one table) to the sinks that need them
        (`ChunkCopier.give`), then the chunks are done."""
        try:
            self.job.copier.give(source, held, self.snapshot)
        except CdcError as exc:
            self._quarantine(held[0].chunk.table, exc)
            return
        except DESCRIBED_OTHERWISE as exc:
            self.job.changed[held[0].chunk.table] = str(exc).strip()  # as in `_work`
            return
        for h in held:
            self._done(state, h.chunk, h.rows.rows)
