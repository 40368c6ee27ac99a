"""Repairing drift: the source rows of differing key ranges copied into both targets again.

The ranges are copied with a `Backfill` at a fresh exported snapshot, and target keys the
snapshot does not hold are tombstoned at the snapshot's version. A snapshot-versioned row
never overwrites a newer change (DESIGN.md invariant 3), so repair is safe while the
daemon streams. The caller verifies the repaired ranges again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from cdc.apply.batch import Batch, RowImage, TableBatch
from cdc.check.drift import DiffKind, TableResult, Target
from cdc.check.keyrange import Key, KeyRange, pg_range_filter
from cdc.check.rangequery import pg_key_exists
from cdc.check.stores import connect
from cdc.errors import ErrorKind
from cdc.load.backfill import Backfill
from cdc.ops.settings import Settings
from cdc.protocol import UNCHANGED_TOAST, TupleValue
from cdc.schema import TableSchema
from cdc.sinks.factory import SinkFactory
from cdc.stream.snapshot import Snapshot, exported_snapshot, import_snapshot


def repair_drift(
    table: TableSchema,
    result: TableResult,
    *,
    settings: Settings,
    source: psycopg.Connection[Any],
    source_dsn: str,
    historic_dsn: str,
    sink_factory: SinkFactory,
) -> list[KeyRange]:
    """Copy the drifted pieces of `result` again at a fresh snapshot and tombstone the keys
    the source does not hold there; returns the pieces. `source` quotes the pieces'
    predicate; `source_dsn` and `historic_dsn` are canonical (`canonical_dsn`)."""
    pieces = list(result.drift)
    where = sql.SQL(" OR ").join(
        sql.SQL("({})").format(pg_range_filter(table, piece, inline=True)[0]) for piece in pieces
    )
    predicate = where.as_string(source)
    extras = {d.ident: d.key for d in result.diffs(Target.HISTORIC) if d.kind is DiffKind.EXTRA}
    extras.update(
        (d.ident, d.key) for d in result.diffs(Target.CLICKHOUSE) if d.kind is DiffKind.EXTRA
    )
    job = f"verify-repair-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    with exported_snapshot(source_dsn) as snapshot:
        Backfill(
            source_dsn,
            historic_dsn,
            settings.historic_schema,
            job,
            [table],
            sink_factory,
            chunk_size=settings.backfill_chunk_size,
            workers=1,
            batch_bytes=settings.backfill_batch_mb << 20,
            where=predicate,
        ).run(snapshot)
        gone = _absent_at(source_dsn, snapshot, table, list(extras.values()))
        if gone:
            _tombstone(sink_factory, table, gone, snapshot)
    return pieces


def _absent_at(
    source_dsn: str, snapshot: Snapshot, table: TableSchema, keys: Sequence[Key]
) -> list[Key]:
    """The keys the source does not hold at `snapshot`."""
    if not keys:
        return []
    with connect(source_dsn, ErrorKind.SOURCE_CONNECTION) as conn:
        import_snapshot(conn, snapshot)
        absent = []
        for key in keys:
            query, params = pg_key_exists(table, key)
            row = conn.execute(query, params).fetchone()
            if row is not None and not row[0]:
                absent.append(key)
        conn.execute("ROLLBACK")
    return absent


def _tombstone(
    sink_factory: SinkFactory, table: TableSchema, keys: Sequence[Key], snapshot: Snapshot
) -> None:
    """Delete `keys` in both targets at the snapshot's version: a newer row stays."""
    batch_table = TableBatch(table)
    for key in keys:
        values: list[TupleValue] = [UNCHANGED_TOAST] * len(table.columns)
        for index, text in zip(table.key_indexes, key, strict=True):
            values[index] = text.encode()
        key_values = tuple(values[i] for i in table.key_indexes)
        batch_table.rows[key_values] = RowImage(snapshot.version, True, tuple(values))
    batch = Batch(tables={batch_table.name: batch_table}, end_lsn=snapshot.lsn)
    sinks = sink_factory()
    try:
        sinks[0].complete(batch)  # historic keeps the values tombstones need
        for sink in sinks:
            sink.apply(batch)
    finally:
        for sink in sinks:
            sink.close()
