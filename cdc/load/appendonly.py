"""Copying an append-only log (a table without a key): its chunks, its rows, and the
targets' rows a copy replaces (every log's copy, and a keyed table's copied under a name
another table had).

A log is copied by ranges of blocks, each row versioned by the snapshot and its ctid
(`cdc.load.chunks.log_version`). Its copy replaces the targets' rows: first everything
below the snapshot's version is removed, as a TRUNCATE at that version would (the
snapshot holds every row committed before it), then the rows are copied; a job cut short
copies such a table again from its first chunk, at the new snapshot (its rows' versions
depend on the snapshot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from cdc.apply.batch import Batch, RowImage, TableBatch
from cdc.load.chunks import (
    ROWS_PER_BLOCK,
    Chunk,
    Key,
    log_copy_sql,
    relation_blocks_sql,
)
from cdc.load.copytext import parse_row, split_lines
from cdc.schema import TableSchema
from cdc.sinks.base import Sink
from cdc.stream.snapshot import Snapshot


def block_chunks(
    source: psycopg.Connection[Any], table: TableSchema, number: int, lower: Key, chunk_size: int
) -> Iterator[Chunk]:
    """The log's chunks: ranges of blocks holding about `chunk_size` rows, from chunk
    `number` with lower block `lower` on; the last has no upper block."""
    row = source.execute(relation_blocks_sql(table)).fetchone()
    blocks = row[0] if row is not None else 0
    step = max(1, chunk_size // ROWS_PER_BLOCK)
    while True:
        upper = (int(lower[0]) if lower else 0) + step
        chunk = Chunk(table.name, number, lower, None if upper >= blocks else [str(upper)])
        yield chunk
        if chunk.upper is None:
            return
        number, lower = number + 1, chunk.upper


def read_log_chunk(
    source: psycopg.Connection[Any],
    batch_table: TableBatch,
    table: TableSchema,
    chunk: Chunk,
    where: str | None,
    snapshot: Snapshot,
) -> None:
    """The log's chunk into `batch_table`, each row keyed by its version (`log_copy_sql`)."""
    width = len(table.columns)
    query = log_copy_sql(table, chunk, where, snapshot.version)
    with source.cursor() as cur, cur.copy(query) as copy:
        for line in split_lines(bytes(block) for block in copy):
            values = parse_row(line, width + 1)
            version = values[-1]
            assert isinstance(version, bytes)
            batch_table.rows[(version,)] = RowImage(int(version), False, values[:-1], True)


def replace_copied(
    make_sinks: Callable[[], list[Sink]], tables: Sequence[TableSchema], snapshot: Snapshot
) -> None:
    """Remove every row of `tables` older than the snapshot from every target, as a
    TRUNCATE committed just before it would: the copy brings back what the source holds
    (its rows carry the snapshot's version, or above it for a log)."""
    batch = Batch(end_lsn=snapshot.lsn)
    for table in tables:
        batch_table = TableBatch(table)
        batch_table.truncate_version = snapshot.version - 1
        batch.tables[batch_table.name] = batch_table
    sinks = make_sinks()
    try:
        for sink in sinks:
            sink.apply(batch)
    finally:
        for sink in sinks:
            sink.close()
