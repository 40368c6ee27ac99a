"""Copying one chunk of a backfill job at its snapshot, and giving its rows to the targets.

A chunk is read unparsed where its types allow (binary COPY when every target given it
takes that, else COPY text), copied from table to table by the server for a historic
schema in the source database, and parsed into a batch otherwise (an append-only log's
chunk always: each row is keyed by its version). Rows read unparsed for a target outside
the source database are held (`Held`) and given later, several chunks in one write. A
transient failure rolls the chunk back and copies it again (`CHUNK_ATTEMPTS` at most).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import psycopg
from tenacity import Retrying

from cdc.apply.batch import Batch, RowImage, TableBatch
from cdc.load.appendonly import read_log_chunk
from cdc.load.chunks import (
    OUT_OF_RANGE,
    Chunk,
    binary_copy_sql,
    chunk_filter,
    copy_sql,
    direct_copy_ok,
    direct_copy_sql,
)
from cdc.load.copyout import copy_out
from cdc.load.copytext import parse_row, split_lines
from cdc.ops import faults
from cdc.retry import Backoff, retryable, retrying
from cdc.schema import TableSchema
from cdc.sinks.base import CopiedRows, CopyFormat, Sink
from cdc.sinks.historic.sink import HistoricSink
from cdc.stream.snapshot import Snapshot, import_snapshot

CHUNK_ATTEMPTS = 6


def _transient(exc: BaseException) -> bool:
    """Worth copying the chunk again: Postgres rolled it back for a conflict with another
    writer, or a target's connection failed (the sink reconnects on its next use)."""
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("40"):
        return True  # class 40, transaction rollback: deadlock, serialization failure
    return retryable(exc)


def _retrying(table: str, chunk: int) -> Retrying:
    """Attempts at a chunk's write, again after a transient failure (`_transient`)."""
    backoff = Backoff(first_s=0.1, max_s=5.0, attempts=CHUNK_ATTEMPTS)
    return retrying("backfill_chunk_retry", backoff, retry_if=_transient, table=table, chunk=chunk)


@dataclass
class Held:
    """A chunk copied (committed, in the targets in the source database) whose rows are
    still to be given to `sinks`."""

    chunk: Chunk
    rows: CopiedRows
    sinks: list[Sink]


class ChunkCopier:
    """Copies chunks of `tables` from the source at `source_dsn` (its canonical form: the
    one a historic sink in the same database is recognised by), rows filtered by `where`."""

    def __init__(
        self, source_dsn: str, tables: Mapping[str, TableSchema], where: str | None
    ) -> None:
        self.source_dsn = source_dsn
        self.tables = tables
        self.where = where

    def copy(
        self,
        source: psycopg.Connection[Any],
        sinks: list[Sink],
        chunk: Chunk,
        snapshot: Snapshot,
        parse: bool = False,
    ) -> tuple[int, Held | None]:
        """Copy one chunk (parsed, with `parse`) and commit: its row count, and its rows
        held for the sinks that are given them later. A transient failure (a deadlock or
        serialization failure against the daemon's writes, a lost target connection) rolls
        the chunk back and copies it again, with capped exponential backoff,
        `CHUNK_ATTEMPTS` times at most."""
        for attempt in _retrying(chunk.table, chunk.number):
            with attempt:
                try:
                    import_snapshot(source, snapshot, read_only=False)
                    if parse:
                        table = self.tables[chunk.table]
                        copied = self._copy_parsed(source, sinks, table, chunk, snapshot)
                        result: tuple[int, Held | None] = (copied, None)
                    else:
                        result = self._copy(source, sinks, chunk, snapshot)
                    source.commit()
                except BaseException:
                    if not source.closed:
                        source.rollback()
                    raise
        return result

    def give(self, source: psycopg.Connection[Any], held: list[Held], snapshot: Snapshot) -> None:
        """Give the held chunks' rows (all of one table) to the sinks that need them, one
        write per sink; a chunk a sink refuses is parsed for it. A `CdcError` says the
        table cannot be given them."""
        table = self.tables[held[0].chunk.table]
        for sink in {id(s): s for h in held for s in h.sinks}.values():
            mine = [h for h in held if any(s is sink for s in h.sinks)]
            for attempt in _retrying(table.name, mine[0].chunk.number):
                with attempt:
                    refused = sink.apply_copy(table, [h.rows for h in mine], snapshot.version)
            for position in refused:
                self.copy(source, [sink], mine[position].chunk, snapshot, parse=True)

    def _copy(
        self, source: psycopg.Connection[Any], sinks: list[Sink], chunk: Chunk, snapshot: Snapshot
    ) -> tuple[int, Held | None]:
        """Copy one chunk, inside a transaction on `source` that sees `snapshot`: unparsed
        where the types allow (read as binary COPY when every sink that is given the rows
        takes it), copied within the database where it can be, and the rows held for the
        other sinks."""
        table = self.tables[chunk.table]
        if not direct_copy_ok(table) or table.append_only:
            return self._copy_parsed(source, sinks, table, chunk, snapshot), None
        given = [sink for sink in sinks if not self._within(sink)]
        binary = all(sink.copy_format(table) is CopyFormat.BINARY for sink in given)
        copied = self._copy_out_direct(source, table, chunk, snapshot, binary)
        if copied is None:
            return self._copy_parsed(source, sinks, table, chunk, snapshot), None
        faults.point("mid_backfill_chunk")
        rest = [s for s in sinks if not self._copied_within(source, s, table, chunk, snapshot)]
        return copied.rows, Held(chunk, copied, rest) if rest else None

    def _copy_out_direct(
        self,
        source: psycopg.Connection[Any],
        table: TableSchema,
        chunk: Chunk,
        snapshot: Snapshot,
        binary: bool,
    ) -> CopiedRows | None:
        """The chunk's rows for the targets, untouched: as binary COPY, or as COPY text for
        both targets; None if, in text, a date or timestamp in it lies outside ClickHouse's
        range (the chunk is then parsed, which names the value in its error)."""
        if binary:
            data, messages = copy_out(source, binary_copy_sql(table, chunk, self.where))
            return CopiedRows(CopyFormat.BINARY, data, messages - 1)
        source.execute("SAVEPOINT cdc_direct_copy")
        try:
            data, rows = copy_out(
                source, direct_copy_sql(table, chunk, self.where, snapshot.version)
            )
        except psycopg.errors.InvalidDatetimeFormat as exc:
            if OUT_OF_RANGE not in str(exc):
                raise
            source.execute("ROLLBACK TO SAVEPOINT cdc_direct_copy")
            return None
        return CopiedRows(CopyFormat.TEXT, data, rows)

    def _within(self, sink: Sink) -> TypeGuard[HistoricSink]:
        """A historic sink in the source database: rows are copied from table to table."""
        return isinstance(sink, HistoricSink) and sink.in_database(self.source_dsn)

    def _copied_within(
        self,
        source: psycopg.Connection[Any],
        sink: Sink,
        table: TableSchema,
        chunk: Chunk,
        snapshot: Snapshot,
    ) -> bool:
        """For a historic schema in the source database: the chunk's rows copied from table
        to table by the server, in the snapshot's transaction (the caller commits it), no
        value leaving it. False if this sink is elsewhere, or the rows met a concurrent write
        (REPEATABLE READ refuses it; the caller copies them the ordinary way)."""
        if not self._within(sink):
            return False
        sink.prepare([table])
        rows = chunk_filter(table, chunk, self.where)
        # A key range the table does not hold yet (an initial load) takes a plain INSERT.
        for upsert in (False, True):
            source.execute("SAVEPOINT cdc_copy_within")
            try:
                source.execute(sink.copy_within_sql(table, rows, snapshot.version, upsert))
            except psycopg.errors.UniqueViolation:
                source.execute("ROLLBACK TO SAVEPOINT cdc_copy_within")
                continue
            except psycopg.errors.SerializationFailure:
                source.execute("ROLLBACK TO SAVEPOINT cdc_copy_within")
                return False
            return True
        return False

    def _copy_parsed(
        self,
        source: psycopg.Connection[Any],
        sinks: list[Sink],
        table: TableSchema,
        chunk: Chunk,
        snapshot: Snapshot,
    ) -> int:
        batch_table = TableBatch(table)
        if table.append_only:
            read_log_chunk(source, batch_table, table, chunk, self.where, snapshot)
            return self._give_parsed(sinks, batch_table, table, snapshot)
        version = snapshot.version
        key_indexes = table.key_indexes
        width = len(table.columns)
        with source.cursor() as cur, cur.copy(copy_sql(table, chunk, self.where)) as copy:
            for line in split_lines(bytes(block) for block in copy):
                values = parse_row(line, width)
                key = tuple(values[i] for i in key_indexes)
                batch_table.rows[key] = RowImage(version, False, values)
        return self._give_parsed(sinks, batch_table, table, snapshot)

    @staticmethod
    def _give_parsed(
        sinks: list[Sink], batch_table: TableBatch, table: TableSchema, snapshot: Snapshot
    ) -> int:
        faults.point("mid_backfill_chunk")
        batch = Batch(tables={batch_table.name: batch_table}, end_lsn=snapshot.lsn)
        for sink in sinks:
            sink.apply(batch)
        return len(batch_table.rows)
