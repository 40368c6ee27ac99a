"""One step of the drift monitor: a key range of a table compared in a source snapshot.

1. Export a snapshot of the source (a temporary slot: its consistent point S is exact),
   read the range's keys and row hashes in it (`cdc.check.sourceread.SourceRead`), and end
   it: a snapshot kept open would hold back the source's pruning of dead rows during the
   wait that follows.
2. Write a heartbeat into the source's WAL and wait until the daemon holds everything
   committed before S (`cdc.check.position`).
3. Compare each target's fingerprint of its rows older than S (`_version < S << 64`)
   with the source's, both leaving out the keys the target holds changed since: those are
   newer than the read, and a later pass compares them. Where the fingerprints differ,
   narrow to small pieces and compare key by key (`cdc.check.drift.classify`); every
   difference left (value, presence, deletion) is drift at S.
4. Re-read the drifted pieces once at a fresh snapshot; only keys that differ in both
   reads are drift (`confirmed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg

from cdc.check.drift import Ident, KeyDiff, SourceRow, Target, classify
from cdc.check.keyrange import Key, KeyRange
from cdc.check.position import TargetPosition
from cdc.check.sourceread import Run, SourceRead
from cdc.check.stores import TableStores
from cdc.ops.settings import Settings
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.stream.snapshot import exported_snapshot, import_snapshot
from cdc.versions import snapshot_version

WAIT_S: Final = 60.0  # a step waits this long for the daemon to pass its snapshot
HEARTBEAT_SQL: Final = "SELECT pg_logical_emit_message(false, %s, now()::text)"
Diffs = dict[KeyRange, list[KeyDiff]]
Connections = tuple[psycopg.Connection[Any], psycopg.Connection[Any], psycopg.Connection[Any]]


def confirmed(first: Sequence[KeyDiff], second: Sequence[KeyDiff]) -> list[KeyDiff]:
    """The drift of a re-read that the first read found too (same target and key)."""
    seen = {(d.target, d.ident) for d in first if not d.in_flight}
    return [d for d in second if not d.in_flight and (d.target, d.ident) in seen]


@dataclass
class RangeCheck:
    """One step's outcome."""

    upper: Key | None  # where the range ended (None: the table's end)
    rows: int  # source rows in the range
    compared: bool  # False: the daemon did not pass the snapshot in time
    drift: Diffs = field(default_factory=dict)  # confirmed, per piece
    newer: int = 0  # keys changed since the snapshot in a target: compared in a later pass

    @property
    def diffs(self) -> list[KeyDiff]:
        return [d for diffs in self.drift.values() for d in diffs]


class RangeChecker:
    """Runs the monitor's steps. `connections()` returns the monitor's source (reads inside
    snapshots), control (heartbeats) and historic connections, `clickhouse_client()` the
    client to read ClickHouse with, `stopped()` whether the monitor is stopping. `read`
    counts the source rows the last step read, narrowing too (the pace counts them)."""

    def __init__(
        self,
        settings: Settings,
        position: TargetPosition,
        connections: Callable[[], Connections],
        clickhouse_client: Callable[[], Any],
        stopped: Callable[[], bool],
        log: Any,
        heartbeat_prefix: str,
    ) -> None:
        self.settings = settings
        self.position = position
        self.connections = connections
        self.clickhouse_client = clickhouse_client
        self.stopped = stopped
        self.log = log
        self.heartbeat_prefix = heartbeat_prefix
        self.read = 0

    @contextmanager
    def _snapshot(self, table: TableSchema) -> Iterator[tuple[TableStores, Lsn]]:
        """The table's stores, the source read inside a fresh exported snapshot at S."""
        source, _, historic = self.connections()
        with exported_snapshot(self.settings.require_source_dsn()) as snapshot:
            import_snapshot(source, snapshot)
            try:
                stores = TableStores(
                    table,
                    source,
                    historic,
                    self.settings.historic_schema,
                    self.clickhouse_client(),
                    self.settings.clickhouse_database,
                    self.settings.clickhouse_cluster is not None,
                )
                yield stores, snapshot.lsn
            finally:
                source.execute("ROLLBACK")

    def _passed(self, lsn: Lsn) -> bool:
        """Whether the daemon holds everything committed before `lsn` (a heartbeat after
        it lets an idle stream say so at once)."""
        _, control, _ = self.connections()
        control.execute(HEARTBEAT_SQL, (self.heartbeat_prefix,))
        passed = self.position.wait_past(lsn, WAIT_S, self.stopped)
        if not passed and not self.stopped():
            self.log.warning(
                "monitor_waiting", lsn=str(lsn), applied=str(self.position.lsn),
                hint="the daemon has not applied the source past the monitor's snapshot",
            )  # fmt: skip
        return passed

    def check(
        self, table: TableSchema, lower: Key | None, size: int
    ) -> tuple[RangeCheck, tuple[Target, ...]]:
        """Compare the `size` keys after `lower`; re-read what differs once. The source is
        read at the start of each snapshot, which ends before the wait for the daemon."""
        with self._snapshot(table) as (stores, lsn):
            source = stores.source_read(lower, size)
        self.read = len(source)
        if not self._passed(lsn) or self._truncated_since(stores, lsn):
            return RangeCheck(lower, len(source), compared=False), stores.targets
        leaves, newer = self._differing_leaves(stores, source, snapshot_version(lsn))
        first = self._key_diffs(
            stores, {leaf.range: source.leaf_rows(leaf) for leaf in leaves}, lsn
        )
        check = RangeCheck(source.range.upper, len(source), compared=True, newer=newer)
        drifted = [leaf for leaf, diffs in first.items() if any(not d.in_flight for d in diffs)]
        if drifted:
            with self._snapshot(table) as (stores, lsn):
                again = {leaf: stores.source_rows(leaf) for leaf in drifted}
            self.read += sum(len(rows) for rows in again.values())
            if not self._passed(lsn) or self._truncated_since(stores, lsn):
                return check, stores.targets  # not confirmed: the next pass looks again
            second = self._key_diffs(stores, again, lsn)
            for leaf in drifted:
                if both := confirmed(first[leaf], second.get(leaf, [])):
                    check.drift[leaf] = both
        return check, stores.targets

    @staticmethod
    def _truncated_since(stores: TableStores, lsn: Lsn) -> bool:
        """Whether a target truncated the table after the snapshot: the rows it removed
        are absent without a newer version to say so, so the range is compared in a later
        pass."""
        version = snapshot_version(lsn)
        return any(stores.truncated_since(t, version) for t in stores.targets)

    @staticmethod
    def _differing_leaves(
        stores: TableStores, source: SourceRead, newer: int
    ) -> tuple[list[Run], int]:
        """The runs of `source`, at most `LEAF_ROWS` rows each, whose ranges differ in a
        target, and how many keys the targets hold changed since the snapshot (version
        `newer` or later: left out of every comparison, a later pass compares them)."""

        def differs(run: Run) -> tuple[bool, int]:
            found, changed = False, 0
            for target in stores.targets:
                older, keys = stores.target_aggregate_before(target, run.range, newer)
                which = 1 if target is Target.HISTORIC else 2
                found = found or older != source.aggregate_without(run, keys, which)
                changed += len(keys)
            return found, changed

        whole, changed = differs(source.whole())
        pending = [source.whole()] if whole else []
        leaves: list[Run] = []
        while pending:
            leaves += [run for run in pending if source.is_leaf(run)]
            pending = [
                piece
                for run in pending
                if not source.is_leaf(run)
                for piece in source.split(run)
                if differs(piece)[0]
            ]
        return leaves, changed

    @staticmethod
    def _key_diffs(
        stores: TableStores, sources: dict[KeyRange, dict[Ident, SourceRow]], lsn: Lsn
    ) -> Diffs:
        """The keys of each leaf that differ from its source rows; those whose target row is
        not older than the snapshot (`_version >= lsn << 64`) are marked in flight."""
        newer = (int(lsn), int(Lsn.MAX))
        found: Diffs = {}
        for leaf, source in sources.items():
            diffs = [
                d
                for target in stores.targets
                for d in classify(target, source, stores.target_rows(target, leaf), newer)
            ]
            if diffs:
                found[leaf] = diffs
        return found
