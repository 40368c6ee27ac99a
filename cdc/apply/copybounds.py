"""Where a table's copy divides its stream: a batch never folds a change made after a
table's copy snapshot onto an image of the table's row from before it.

A copy the schema follower makes (a table made again, rewritten, renamed into, given a
partition) holds what the stream never sent: rows changed without a change streamed for
them. An image from before the copy's snapshot is then stale, and a later update that
leaves a value unchanged (TOAST) must take it from the copy, not from that image. Across
batches the historic sink's fill passes over such images (`cdc.sinks.historic.fill`);
inside one batch the fold would merge them, so the batch ends there instead
(`BatchBuilder.add` asks `splits`).

A boundary is a table's copy snapshot: recorded ones at a start (a replay starts before
them), and each snapshot a copy the daemon makes takes (`cdc.stream.tableload`; a table
rewritten while it is copied is copied again, at a newer one). While a snapshot is being
taken its position is not known yet, and the stream may pass it before it is: a batch then
holds changes of the table from one transaction only, until the position is known.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Mapping

from cdc.apply.batch import TableBatch, TableName


class CopyBounds:
    """The copy boundaries the stream has not passed yet, and the tables being copied;
    safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ahead: list[tuple[int, TableName]] = []  # (snapshot LSN, table), a min-heap
        self._taking: dict[TableName, int] = {}  # snapshots being taken, per table

    def copied(self, table: TableName, lsn: int) -> None:
        """A copy of `table` was made at the snapshot `lsn` (or is being made)."""
        with self._lock:
            heapq.heappush(self._ahead, (lsn, table))

    def taking(self, table: TableName) -> None:
        """A snapshot to copy `table` at is being taken; its position is not known yet."""
        with self._lock:
            self._taking[table] = self._taking.get(table, 0) + 1

    def taken(self, table: TableName, lsn: int | None) -> None:
        """The snapshot announced with `taking` is at `lsn` (None: none was taken)."""
        with self._lock:
            if lsn is not None:  # first: `splits` reads the two without the lock
                heapq.heappush(self._ahead, (lsn, table))
            left = self._taking.pop(table, 1) - 1
            if left:
                self._taking[table] = left

    def splits(self, tables: Mapping[TableName, TableBatch], commit_lsn: int) -> bool:
        """Whether a transaction committed at `commit_lsn` must start a new batch, given
        the batch's `tables`: a snapshot of one of them is being taken, or one's lies
        after the batch's first change of it and at or before `commit_lsn`. Boundaries at
        or before `commit_lsn` are passed from then on (later changes are all newer), and
        forgotten."""
        if not self._taking and not self._ahead:  # as almost always: no lock taken (a
            return False  # snapshot taken from now on is after this change)
        with self._lock:
            split = any(table in tables for table in self._taking)
            ahead = self._ahead
            while ahead and ahead[0][0] <= commit_lsn:
                lsn, table = heapq.heappop(ahead)
                held = tables.get(table)
                split = split or (held is not None and held.first_commit < lsn)
            return split
