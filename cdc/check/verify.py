"""Verify that historic and ClickHouse hold exactly the source's rows; name and repair drift.

Method: each table is split into key ranges (every `range_size`-th source key, in an order
both engines share). Per range, each store computes `count(*)` and `sum(row hash)` itself
(`cdc.check.rowhash`), so a range that agrees costs one small query per store and no rows move.
A range that differs is split again (an eighth of its rows per piece) until a piece holds
at most `LEAF_ROWS` source rows; for those pieces keys and row hashes are fetched and
matched: missing in a target, extra in a target, or changed.

Changes in flight are not drift. Before the targets are read for a re-check, verify waits
(bounded) until the slot's `confirmed_flush_lsn` has passed the WAL position noted right
after the source read: the daemon has then applied everything that read saw. A target row
whose `_version` was committed at or after the WAL flush position noted before the source
read is newer than that read (a commit becomes visible only once flushed) and does not
count. Pieces are compared key by key up to `MAX_CHECKS` times; what still differs is
drift, "unconfirmed" when the slot could not confirm that the daemon had caught up.

Repair copies the source rows of each differing range into both targets with a `Backfill`
at a fresh exported snapshot, and tombstones, at the snapshot's version, target keys the
snapshot does not hold. A snapshot-versioned row never overwrites a newer change (DESIGN.md
invariant 3), so repair is safe while the daemon streams. The repaired ranges are verified
again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from cdc.apply.batch import Batch, RowImage, TableBatch
from cdc.check import rowhash
from cdc.check.drift import (
    DiffKind,
    Ident,
    KeyDiff,
    SourceRow,
    TableResult,
    Target,
    TargetRow,
    WalPosition,
    classify,
)
from cdc.check.rowhash import Key, KeyRange
from cdc.classify import clickhouse_error
from cdc.errors import CdcError, ErrorKind
from cdc.load.backfill import Backfill
from cdc.load.chunks import relation_for
from cdc.load.planning import published_schemas
from cdc.ops.settings import Settings, redact_url
from cdc.protocol import UNCHANGED_TOAST, TupleValue
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.ddl import current_view_name
from cdc.sinks.factory import SinkFactory, default_sinks
from cdc.stream import slots
from cdc.stream.session import canonical_dsn
from cdc.stream.snapshot import Snapshot, exported_snapshot, import_snapshot

LEAF_ROWS: Final = 200  # ranges this small are compared key by key
FANOUT: Final = 8  # a differing range is split into about this many pieces
MAX_CHECKS: Final = 3  # key comparisons per differing range
POLL_S: Final = 0.1


class SlotWatch:
    """Waits, bounded, until the pipeline's slot has confirmed a WAL position."""

    def __init__(self, conn: psycopg.Connection[Any], slot: str, timeout_s: float) -> None:
        self.conn = conn
        self.slot = slot
        self.timeout_s = timeout_s
        self.confirmed = Lsn.ZERO
        self.problem: str | None = None  # set once a wait failed; later waits only look

    def wait_past(self, lsn: Lsn) -> bool:
        deadline = time.monotonic() + (0.0 if self.problem else self.timeout_s)
        while self.confirmed < lsn:
            info = slots.get_slot(self.conn, self.slot)
            if info is None:
                self.problem = (
                    f"slot {self.slot!r} does not exist, so verify cannot tell drift from "
                    "changes the daemon has not applied yet"
                )
                return False
            self.confirmed = max(self.confirmed, info.confirmed_flush_lsn or Lsn.ZERO)
            if self.confirmed >= lsn:
                break
            if time.monotonic() >= deadline:
                self.problem = (
                    f"slot {self.slot!r} did not pass {lsn} within {self.timeout_s:g} s (it "
                    f"is at {self.confirmed}): is the daemon running and keeping up?"
                )
                return False
            time.sleep(POLL_S)
        return True


class TableStores:
    """One table's reads in the three stores: aggregates, rows, split points, WAL position."""

    def __init__(
        self,
        table: TableSchema,
        source: psycopg.Connection[Any],
        historic: psycopg.Connection[Any],
        historic_schema: str,
        ch_client: Any,
        ch_database: str,
        ch_cluster: bool = False,
    ) -> None:
        self.table = table
        self.source = source
        self.historic = historic
        self.historic_schema = historic_schema
        self.ch_client = ch_client
        self.ch_database = ch_database
        self.ch_cluster = ch_cluster
        self.clickhouse_skipped = rowhash.clickhouse_key_problem(table)
        self.targets = (Target.HISTORIC,) + (
            (Target.CLICKHOUSE,) if self.clickhouse_skipped is None else ()
        )
        # The source's rows hashed as they are (for historic) and as ClickHouse holds them.
        self._pg_hash = rowhash.pg_row_hash(table.columns)
        self._pg_hashes = [self._pg_hash]
        if rowhash.held_differently(table.columns):
            self._pg_hashes.append(rowhash.pg_row_hash(table.columns, held=True))
        self._ch_hash = rowhash.ch_row_hash(table.columns)

    # -- reading ----------------------------------------------------------------------------

    def _pg(
        self, conn: psycopg.Connection[Any], query: rowhash.PgQuery, what: str
    ) -> list[tuple[Any, ...]]:
        try:
            return conn.execute(query[0], query[1]).fetchall()
        except psycopg.Error as exc:
            kind = (
                ErrorKind.SCHEMA
                if isinstance(exc, psycopg.ProgrammingError)
                else ErrorKind.SOURCE_CONNECTION
                if conn is self.source
                else ErrorKind.SINK_CONNECTION
            )
            raise CdcError(kind, f"cannot read {what}: {str(exc).strip()}") from exc

    def _ch(self, query: rowhash.ChQuery) -> list[tuple[Any, ...]]:
        try:
            return list(self.ch_client.query(query[0], parameters=query[1]).result_rows)
        except Exception as exc:  # the client raises its own types per backend
            error = clickhouse_error(exc, "", f"cannot read {self.table.name} in ClickHouse")
            if error is None:
                raise
            raise error from exc

    def wal(self, position: WalPosition) -> Lsn:
        query = sql.SQL("SELECT {}()::text").format(sql.Identifier(position.value))
        return Lsn.parse(self._pg(self.source, (query, []), "the WAL position")[0][0])

    def boundaries(self, rng: KeyRange, size: int) -> list[Key]:
        query = rowhash.pg_boundaries(self.table, rng, size)
        return [tuple(r[0]) for r in self._pg(self.source, query, self.table.qualified_name)]

    def next_boundary(self, lower: Key | None, size: int) -> Key | None:
        """The `size`-th key after `lower` (None: fewer are left)."""
        query = rowhash.pg_next_boundary(self.table, lower, size)
        rows = self._pg(self.source, query, self.table.qualified_name)
        return tuple(rows[0][0]) if rows else None

    def source_aggregate(self, rng: KeyRange) -> tuple[int, int, int]:
        """(rows, hash sum of the rows as they are, hash sum as ClickHouse holds them)."""
        query = rowhash.pg_aggregate(
            (self.table.schema, self.table.name), self.table, rng, self._pg_hashes
        )
        row = self._pg(self.source, query, self.table.qualified_name)[0]
        return int(row[0]), int(row[1]), int(row[-1])

    def target_aggregate(self, target: Target, rng: KeyRange) -> tuple[int, int]:
        view = current_view_name(self.table.name)
        if target is Target.HISTORIC:
            query = rowhash.pg_aggregate(
                (self.historic_schema, view), self.table, rng, [self._pg_hash]
            )
            row = self._pg(self.historic, query, f"{self.historic_schema}.{view}")[0]
        else:
            row = self._ch(
                rowhash.ch_aggregate(self.ch_database, view, self.table, rng, self._ch_hash)
            )[0]
        return int(row[0]), int(row[1])

    def differs(self, rng: KeyRange, source: tuple[int, int, int]) -> bool:
        expected = {Target.HISTORIC: source[:2], Target.CLICKHOUSE: (source[0], source[2])}
        return any(self.target_aggregate(t, rng) != expected[t] for t in self.targets)

    def source_rows(self, rng: KeyRange) -> dict[Ident, SourceRow]:
        query = rowhash.pg_source_rows(self.table, rng, self._pg_hashes)
        return {
            tuple(r[0]): SourceRow(tuple(r[1]), (int(r[2]), int(r[-1])))
            for r in self._pg(self.source, query, self.table.qualified_name)
        }

    def target_rows(self, target: Target, rng: KeyRange) -> dict[Ident, TargetRow]:
        if target is Target.HISTORIC:
            query = rowhash.pg_historic_rows(self.historic_schema, self.table, rng, self._pg_hash)
            rows = self._pg(self.historic, query, f"{self.historic_schema}.{self.table.name}")
        else:
            rows = self._ch(
                rowhash.ch_rows(self.ch_database, self.table, rng, self._ch_hash, self.ch_cluster)
            )
        return {tuple(r[0]): TargetRow(tuple(r[1]), int(r[2]), int(r[3]), bool(r[4])) for r in rows}


class Verifier:
    """Verifies (and repairs) tables; open with `with`, it holds one connection per store."""

    def __init__(
        self,
        settings: Settings,
        *,
        range_size: int = 10_000,
        wait_s: float = 30.0,
        clickhouse_client: Any = None,
        sink_factory: SinkFactory | None = None,
    ) -> None:
        """`clickhouse_client` and `sink_factory`: read and repair through these (the
        daemon's), instead of a client and sinks of its own."""
        self.settings = settings
        self.range_size = range_size
        self.wait_s = wait_s
        self.source_dsn = canonical_dsn(settings.require_source_dsn())
        self.historic_dsn = canonical_dsn(settings.require_historic_dsn())
        self.sink_factory = sink_factory or default_sinks(settings)
        self._source: psycopg.Connection[Any] | None = None
        self._historic: psycopg.Connection[Any] | None = None
        self._given_ch = clickhouse_client
        self._ch: Any = None

    def __enter__(self) -> Verifier:
        try:
            self._source = self._connect(self.source_dsn, ErrorKind.SOURCE_CONNECTION)
            self._historic = self._connect(self.historic_dsn, ErrorKind.SINK_CONNECTION)
            self._ch = self._given_ch or clickhouse.connect(self.settings.require_clickhouse_url())
        except BaseException:
            self.close()
            raise
        self.watch = SlotWatch(self._source, self.settings.slot, self.wait_s)
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for conn in (self._source, self._historic):
            if conn is not None:
                conn.close()
        if self._ch is not None and self._ch is not self._given_ch:
            self._ch.close()
        self._source = self._historic = self._ch = None

    @staticmethod
    def _connect(dsn: str, kind: ErrorKind) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise CdcError(
                kind, f"cannot connect to {redact_url(dsn)}: {redact_url(str(exc).strip())}"
            ) from exc

    def stores(self, table: TableSchema) -> TableStores:
        assert self._source is not None and self._historic is not None
        return TableStores(
            table,
            self._source,
            self._historic,
            self.settings.historic_schema,
            self._ch,
            self.settings.clickhouse_database,
            self.settings.clickhouse_cluster is not None,
        )

    def tables(self, names: Sequence[str]) -> list[TableSchema]:
        """The published tables to compare (all, or `names`): keyed ones only, as ranges
        are key ranges (an append-only log is left out)."""
        assert self._source is not None
        found = published_schemas(self._source, self.settings.publication, names)
        named = sorted(t.name for t in found if t.append_only and t.name in names)
        if named:
            raise CdcError(
                ErrorKind.CONFIG,
                f"{', '.join(named)}: an append-only log has no key to compare ranges of; "
                "`cdc backfill` copies it again whole",
            )
        return [t for t in found if not t.append_only]

    # -- checking ---------------------------------------------------------------------------

    def verify(self, stores: TableStores) -> TableResult:
        """Compare the whole table."""
        bounds = stores.boundaries(KeyRange(None, None), self.range_size)
        ranges = [
            KeyRange(r.lower, r.upper, i)
            for i, r in enumerate(rowhash.ranges_between(None, None, bounds))
        ]
        pending: list[tuple[KeyRange, int]] = []
        total = 0
        for rng in ranges:  # the first look needs no wait: most ranges agree
            source = stores.source_aggregate(rng)
            total += source[0]
            if stores.differs(rng, source):
                pending.append((rng, source[0]))
        return self._narrow(stores, pending, len(ranges), total)

    def recheck(self, stores: TableStores, pieces: Sequence[KeyRange], ranges: int) -> TableResult:
        """Compare `pieces` of a table again (after a repair)."""
        return self._narrow(stores, self._aggregate_round(stores, pieces), ranges, None)

    def _aggregate_round(
        self, stores: TableStores, ranges: Sequence[KeyRange]
    ) -> list[tuple[KeyRange, int]]:
        """The ranges that still differ once the slot has passed the source read."""
        sources = [stores.source_aggregate(rng) for rng in ranges]
        self.watch.wait_past(stores.wal(WalPosition.WRITTEN))
        return [
            (rng, source[0])
            for rng, source in zip(ranges, sources, strict=True)
            if stores.differs(rng, source)
        ]

    def _narrow(
        self,
        stores: TableStores,
        pending: list[tuple[KeyRange, int]],
        ranges: int,
        source_rows: int | None,
    ) -> TableResult:
        """Narrow the differing ranges down to small pieces, then compare those by key."""
        leaves: list[KeyRange] = []
        while pending:
            pieces: list[KeyRange] = []
            for rng, count in pending:
                if count <= LEAF_ROWS:
                    leaves.append(rng)
                    continue
                size = max(LEAF_ROWS, -(-count // FANOUT))
                bounds = stores.boundaries(rng, size)
                pieces += rowhash.ranges_between(rng.lower, rng.upper, bounds, rng.root)
            pending = self._aggregate_round(stores, pieces) if pieces else []
        result = TableResult(
            stores.table,
            ranges,
            source_rows,
            stores.targets,
            clickhouse_skipped=stores.clickhouse_skipped,
        )
        self._compare_keys(stores, leaves, result)
        return result

    def _compare_keys(
        self, stores: TableStores, leaves: list[KeyRange], result: TableResult
    ) -> None:
        """Up to `MAX_CHECKS` key comparisons of the pieces; what differs at the last one,
        and is not newer than its source read, is drift."""
        last: dict[KeyRange, list[KeyDiff]] = {}
        for _ in range(MAX_CHECKS):
            if not leaves:
                break
            found, confirmed = self._key_round(stores, leaves)
            last.update(found)
            leaves = [leaf for leaf, diffs in found.items() if any(not d.in_flight for d in diffs)]
            result.unconfirmed = None if confirmed else self.watch.problem
        for leaf, diffs in last.items():
            drift = [d for d in diffs if not d.in_flight]
            result.in_flight += len(diffs) - len(drift)
            if drift:
                result.drift[leaf] = drift
        if result.clean:
            result.unconfirmed = None

    def _key_round(
        self, stores: TableStores, leaves: Sequence[KeyRange]
    ) -> tuple[dict[KeyRange, list[KeyDiff]], bool]:
        low = stores.wal(WalPosition.FLUSHED)
        sources = [stores.source_rows(leaf) for leaf in leaves]
        confirmed = self.watch.wait_past(stores.wal(WalPosition.WRITTEN))
        rows = [{t: stores.target_rows(t, leaf) for t in stores.targets} for leaf in leaves]
        window = (int(low), int(stores.wal(WalPosition.INSERTED)))
        found = {
            leaf: [d for t in stores.targets for d in classify(t, source, targets[t], window)]
            for leaf, source, targets in zip(leaves, sources, rows, strict=True)
        }
        return found, confirmed

    # -- repair -----------------------------------------------------------------------------

    def repair(self, stores: TableStores, result: TableResult) -> TableResult:
        """Copy the differing pieces again at a fresh snapshot, tombstone keys the source
        does not hold, then compare the pieces again."""
        table = stores.table
        pieces = list(result.drift)
        where = sql.SQL(" OR ").join(
            sql.SQL("({})").format(rowhash.pg_range_filter(table, piece, inline=True)[0])
            for piece in pieces
        )
        assert self._source is not None
        predicate = where.as_string(self._source)
        extras = {d.ident: d.key for d in result.diffs(Target.HISTORIC) if d.kind is DiffKind.EXTRA}
        extras.update(
            (d.ident, d.key) for d in result.diffs(Target.CLICKHOUSE) if d.kind is DiffKind.EXTRA
        )
        job = f"verify-repair-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        with exported_snapshot(self.source_dsn) as snapshot:
            Backfill(
                self.source_dsn,
                self.historic_dsn,
                self.settings.historic_schema,
                job,
                [table],
                self.sink_factory,
                chunk_size=self.settings.backfill_chunk_size,
                workers=1,
                batch_bytes=self.settings.backfill_batch_mb << 20,
                where=predicate,
            ).run(snapshot)
            gone = self._absent_at(snapshot, table, list(extras.values()))
            if gone:
                self._tombstone(table, gone, snapshot)
        return self.recheck(stores, pieces, len({p.root for p in pieces}))

    def _absent_at(self, snapshot: Snapshot, table: TableSchema, keys: Sequence[Key]) -> list[Key]:
        """The keys the source does not hold at `snapshot`."""
        if not keys:
            return []
        with self._connect(self.source_dsn, ErrorKind.SOURCE_CONNECTION) as conn:
            import_snapshot(conn, snapshot)
            absent = []
            for key in keys:
                query, params = rowhash.pg_key_exists(table, key)
                row = conn.execute(query, params).fetchone()
                if row is not None and not row[0]:
                    absent.append(key)
            conn.execute("ROLLBACK")
        return absent

    def _tombstone(self, table: TableSchema, keys: Sequence[Key], snapshot: Snapshot) -> None:
        """Delete `keys` in both targets at the snapshot's version: a newer row stays."""
        batch_table = TableBatch(
            relation_for(table),
            table.column_names,
            tuple(c.type_oid for c in table.columns),
            table.key_indexes,
        )
        for key in keys:
            values: list[TupleValue] = [UNCHANGED_TOAST] * len(table.columns)
            for index, text in zip(table.key_indexes, key, strict=True):
                values[index] = text.encode()
            key_values = tuple(values[i] for i in table.key_indexes)
            batch_table.rows[key_values] = RowImage(snapshot.version, True, tuple(values))
        batch = Batch(tables={batch_table.name: batch_table}, end_lsn=snapshot.lsn)
        sinks = self.sink_factory()
        layouts = {batch_table.name: table}
        try:
            sinks[0].complete(batch, layouts)  # historic keeps the values tombstones need
            for sink in sinks:
                sink.apply(batch, layouts)
        finally:
            for sink in sinks:
                sink.close()


# -- running and reporting ------------------------------------------------------------------


def run(
    settings: Settings, tables: Sequence[str], *, range_size: int, wait_s: float, repair: bool
) -> tuple[list[TableResult], list[TableResult]]:
    """Verify the published tables (or `tables`); with `repair`, repair the drift found.
    Returns the results, and the results of re-checking what was repaired."""
    results: list[TableResult] = []
    repaired: list[TableResult] = []
    with Verifier(settings, range_size=range_size, wait_s=wait_s) as verifier:
        for table in verifier.tables(tables):
            stores = verifier.stores(table)
            result = verifier.verify(stores)
            results.append(result)
            if repair and not result.clean:
                repaired.append(verifier.repair(stores, result))
    return results, repaired
