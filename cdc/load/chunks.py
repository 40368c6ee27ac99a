"""A backfill's chunks as SQL: the state tables, the key ranges, and the queries that copy a
range (pure: builders only, no I/O).

A table is split into primary-key ranges; each is read with `COPY (SELECT ...) TO STDOUT`
in a transaction that imports the job's snapshot. When every column's type goes to
ClickHouse without Python touching a value (`direct_copy_ok`), the chunk is read as binary
COPY, converted in C to RowBinary (`cdc.sinks.clickhouse.rowbinary`), or as COPY text,
which ClickHouse's
TabSeparated reads as is; that text copy fails with `OUT_OF_RANGE` when a date or timestamp
of the chunk lies outside what ClickHouse holds, and the chunk is then parsed.

An append-only log (a table without a key) is split into ranges of blocks instead: a
chunk is `lower <= ctid < upper` by block number, and each row's `_version` is the
snapshot's version plus a number its ctid gives it (`block << 16 | offset`), unique in the
snapshot, so copying the same snapshot again writes the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from cdc.schema import Column, TableSchema, TypeKind, source_relation
from cdc.sinks.clickhouse.types import PgType, decimal_digits, storage_column

CHUNKS_TABLE = "_cdc_backfill"
PLANS_TABLE = "_cdc_backfill_plans"
TABLES_TABLE = "_cdc_tables"

Key = list[str] | None


@dataclass(frozen=True)
class Chunk:
    table: str
    number: int
    lower: Key  # exclusive; None: from the start
    upper: Key  # inclusive; None: to the end


def state_ddl(schema: str) -> list[sql.Composed]:
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} (job text NOT NULL, table_name text NOT NULL, "
            "chunk int NOT NULL, lower_key text[], upper_key text[], done boolean NOT NULL "
            "DEFAULT false, rows bigint, snapshot_lsn pg_lsn, "
            "PRIMARY KEY (job, table_name, chunk))"
        ).format(sql.Identifier(schema), sql.Identifier(CHUNKS_TABLE)),
        # A job's tables, each planned once its last chunk (the one without an upper key)
        # is recorded; chunks are recorded as they are found, so a cut plan continues.
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} (job text NOT NULL, table_name text NOT NULL, "
            "planned boolean NOT NULL DEFAULT false, PRIMARY KEY (job, table_name))"
        ).format(sql.Identifier(schema), sql.Identifier(PLANS_TABLE)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} (table_name text PRIMARY KEY, job text, "
            "state text NOT NULL, error text, updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(schema), sql.Identifier(TABLES_TABLE)),
    ]


def _key_row(table: TableSchema, params: Sequence[str]) -> sql.Composed:
    return sql.SQL("ROW({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(table.column(name).pg_type))
            for name, value in zip(table.primary_key, params, strict=True)
        )
    )


def _key_columns(table: TableSchema) -> sql.Composable:
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(map(sql.Identifier, table.primary_key)))


# Blocks per chunk of an append-only log, for each `ROWS_PER_BLOCK` rows of chunk size.
ROWS_PER_BLOCK = 100
OFFSET_BITS = 16  # a heap page holds fewer than 2**16 tuples


def block_filter(chunk: Chunk) -> list[sql.Composable]:
    """An append-only log's chunk: its rows by block (`lower` inclusive, `upper` not)."""
    parts: list[sql.Composable] = []
    if chunk.lower is not None:
        parts.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({int(chunk.lower[0])},0)")))
    if chunk.upper is not None:
        parts.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({int(chunk.upper[0])},0)")))
    return parts


def relation_blocks_sql(table: TableSchema) -> sql.Composed:
    """The table's size in blocks (rows a snapshot sees lie in them: a table only shrinks
    by pages no snapshot needs)."""
    return sql.SQL(
        "SELECT pg_relation_size({}::regclass) / current_setting('block_size')::bigint"
    ).format(sql.Literal(f"{sql.Identifier(table.schema, table.name).as_string(None)}"))


def log_version(version: int) -> sql.Composed:
    """A copied row's `_version` in an append-only log: `version` (the snapshot's) plus
    `block << 16 | offset` of its ctid."""
    return sql.SQL(
        "({}::numeric + ((ctid::text::point)[0]::bigint << {bits} "
        "| (ctid::text::point)[1]::bigint))"
    ).format(sql.Literal(str(version)), bits=sql.Literal(OFFSET_BITS))


def log_copy_sql(table: TableSchema, chunk: Chunk, where: str | None, version: int) -> sql.Composed:
    """An append-only log's chunk as COPY text: the columns, then each row's `_version`."""
    return sql.SQL(
        "COPY (SELECT {columns}, {version} FROM {relation} WHERE {filter}) TO STDOUT"
    ).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, table.column_names)),
        version=log_version(version),
        relation=source_relation(table),
        filter=chunk_filter(table, chunk, where),
    )


def chunk_filter(table: TableSchema, chunk: Chunk, where: str | None) -> sql.Composable:
    if table.append_only:
        parts = block_filter(chunk)
        if where:
            parts.append(sql.SQL("({})").format(sql.SQL(where)))  # operator-supplied predicate
        return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    parts = []
    if chunk.lower is not None:
        parts.append(sql.SQL("{} > {}").format(_key_columns(table), _key_row(table, chunk.lower)))
    if chunk.upper is not None:
        parts.append(sql.SQL("{} <= {}").format(_key_columns(table), _key_row(table, chunk.upper)))
    if where:
        parts.append(sql.SQL("({})").format(sql.SQL(where)))  # operator-supplied predicate
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


def next_boundary_sql(
    table: TableSchema, after: Key, chunk_size: int, where: str | None
) -> sql.Composed:
    """The `chunk_size`-th key after `after` (None: from the start), in key order: the upper
    bound of the chunk that starts there; no row if fewer keys are left. Each step reads
    `chunk_size` entries of the primary key's index, so walking a table reads the index
    once; the key is printed for the one row kept (a select list is computed for every row
    an OFFSET skips)."""
    keys = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(k)) for k in table.primary_key
    )
    return sql.SQL(
        "SELECT ARRAY[{keys}] FROM (SELECT {order} FROM {relation} WHERE {filter} "
        "ORDER BY {order} OFFSET {skip} LIMIT 1) bound"
    ).format(
        keys=keys,
        relation=source_relation(table),
        filter=chunk_filter(table, Chunk(table.name, 0, after, None), where),
        order=sql.SQL(", ").join(map(sql.Identifier, table.primary_key)),
        skip=sql.Literal(chunk_size - 1),
    )


def copy_sql(table: TableSchema, chunk: Chunk, where: str | None) -> sql.Composed:
    return sql.SQL("COPY (SELECT {columns} FROM {relation} WHERE {filter}) TO STDOUT").format(
        columns=sql.SQL(", ").join(map(sql.Identifier, table.column_names)),
        relation=source_relation(table),
        filter=chunk_filter(table, chunk, where),
    )


TEXT_OID, VARCHAR_OID, BPCHAR_OID, NAME_OID, JSON_OID, JSONB_OID = 25, 1043, 1042, 19, 114, 3802
# text, varchar, bpchar, name, json: their binary form (send/receive) is their text
TEXT_FORM_OIDS = frozenset({TEXT_OID, VARCHAR_OID, BPCHAR_OID, NAME_OID, JSON_OID})
# Types whose COPY text ClickHouse's TabSeparated parses into the mapped type unchanged (same
# escapes, same NULL), so rows can go from the source's COPY to both targets untouched.
DIRECT_TYPES = frozenset(
    {
        PgType.INT2, PgType.INT4, PgType.INT8, PgType.OID, PgType.FLOAT4, PgType.FLOAT8,
        PgType.BOOL, PgType.UUID, PgType.DATE, PgType.TIMESTAMP, PgType.TIMESTAMPTZ,
        TEXT_OID, VARCHAR_OID, BPCHAR_OID, NAME_OID, JSON_OID, JSONB_OID,
    }
)  # fmt: skip
RANGE_CHECKED: dict[int, str] = {
    PgType.DATE: "date", PgType.TIMESTAMP: "timestamp", PgType.TIMESTAMPTZ: "timestamptz"
}  # fmt: skip
FIRST_DAY, END_DAY = "1900-01-01", "2300-01-01"  # ClickHouse's documented DateTime64 range
OUT_OF_RANGE = "cdc: outside ClickHouse's date range"


def direct_copy_ok(table: TableSchema) -> bool:
    for column in table.columns:
        stored = storage_column(column)
        if stored.kind is TypeKind.ENUM:
            continue
        if stored.type_oid == PgType.NUMERIC:
            if stored.type_modifier < 0:
                return False  # unbounded: more digits than Decimal(76, 38) must be refused
            precision, scale = decimal_digits(stored.type_modifier)
            if not 0 <= scale <= precision <= 76:
                return False
            continue
        if stored.type_oid not in DIRECT_TYPES:
            return False
    return True


def _guarded(column: Column) -> sql.Composable:
    """The column, or for a date or timestamp one that fails the query on a value outside
    ClickHouse's range, with an error naming `OUT_OF_RANGE` (the chunk is then parsed, and
    the value refused by name)."""
    name = sql.Identifier(column.name)
    kind = RANGE_CHECKED.get(storage_column(column).type_oid)
    if kind is None:
        return name
    return sql.SQL(
        "CASE WHEN {col} < {low}::{kind} OR {col} >= {high}::{kind} "
        "THEN ({marker} || {col}::text)::{kind} ELSE {col} END"
    ).format(
        col=name, low=sql.Literal(FIRST_DAY), high=sql.Literal(END_DAY), kind=sql.SQL(kind),
        marker=sql.Literal(OUT_OF_RANGE + ": "),
    )  # fmt: skip


def direct_copy_sql(
    table: TableSchema, chunk: Chunk, where: str | None, version: int
) -> sql.Composed:
    """The chunk's rows as COPY text: the columns, then their `_version` (a text constant:
    printing a numeric for every row costs the server about a tenth of the copy). A date or
    timestamp outside ClickHouse's range fails it (`OUT_OF_RANGE`): checked in the same
    scan, not in one of its own."""
    return sql.SQL(
        "COPY (SELECT {columns}, {version}::text FROM {relation} WHERE {filter}) TO STDOUT"
    ).format(
        columns=sql.SQL(", ").join(_guarded(c) for c in table.columns),
        version=sql.Literal(str(version)),
        relation=source_relation(table),
        filter=chunk_filter(table, chunk, where),
    )


def binary_copy_sql(table: TableSchema, chunk: Chunk, where: str | None) -> sql.Composed:
    """The chunk's rows as binary COPY, the table's columns only. It comes in one message
    more than it has rows: the last holds the trailer (the header comes with the first)."""
    return sql.SQL(
        "COPY (SELECT {columns} FROM {relation} WHERE {filter}) TO STDOUT (FORMAT binary)"
    ).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, table.column_names)),
        relation=source_relation(table),
        filter=chunk_filter(table, chunk, where),
    )
