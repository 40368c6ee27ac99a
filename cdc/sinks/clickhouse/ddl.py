"""DDL of the ClickHouse tables, built by pure functions (`cdc.sinks.ddl` says what both
targets share).

A table is a `ReplacingMergeTree(_version, _is_deleted)` (Replicated, with a Distributed
table over it, on a cluster). Identifiers are always quoted
(`cdc.sinks.clickhouse.client.quote_identifier`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Final

from cdc.schema import (
    COMMIT_TIME_COLUMN,
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    Column,
    TableSchema,
    TypeKind,
)
from cdc.sinks.clickhouse.arrays import array_converter
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.limits import Refused, bytea_bytes, value_check
from cdc.sinks.clickhouse.types import PgType, clickhouse_type, storage_column
from cdc.sinks.ddl import current_view_name

CH_VERSION_TYPE: Final = "UInt128"
CH_DELETED_TYPE: Final = "UInt8"
CH_COMMIT_TIME_TYPE: Final = "Nullable(DateTime64(6, 'UTC'))"
REPLICA_PATH: Final = "/clickhouse/tables/{{shard}}/{database}/{table}"
REPLICA_NAME: Final = "{replica}"
DISTRIBUTED_SUFFIX: Final = "_all"


def quote_string(value: str) -> str:
    """A ClickHouse string literal: single quotes, with backslashes and quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _qualified(database: str, name: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(name)}"


def _on_cluster(cluster: str | None) -> str:
    return f" ON CLUSTER {quote_identifier(cluster)}" if cluster is not None else ""


def clickhouse_drop(database: str, name: str, cluster: str | None = None) -> str:
    """Drop a table or a view (ClickHouse's `DROP TABLE` drops either), at once."""
    return f"DROP TABLE IF EXISTS {_qualified(database, name)}{_on_cluster(cluster)} SYNC"


def clickhouse_database(database: str, cluster: str | None = None) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}{_on_cluster(cluster)}"


def clickhouse_table(database: str, table: TableSchema, cluster: str | None = None) -> str:
    """The versioned ReplacingMergeTree (Replicated on a cluster) for `table`."""
    columns = [(c.name, clickhouse_type(c)) for c in table.columns]
    return clickhouse_table_of(database, table.name, columns, table.target_key, cluster)


def clickhouse_table_of(
    database: str,
    name: str,
    columns: Sequence[tuple[str, str]],
    key: Sequence[str],
    cluster: str | None = None,
) -> str:
    """`clickhouse_table` named `name`, of `columns` (name, ClickHouse type) ordered by
    `key`, with the sink's own columns."""
    defined = [f"{quote_identifier(n)} {t}" for n, t in columns]
    defined.append(f"{quote_identifier(VERSION_COLUMN)} {CH_VERSION_TYPE}")
    defined.append(f"{quote_identifier(DELETED_COLUMN)} {CH_DELETED_TYPE}")
    defined.append(f"{quote_identifier(COMMIT_TIME_COLUMN)} {CH_COMMIT_TIME_TYPE}")
    version, deleted = quote_identifier(VERSION_COLUMN), quote_identifier(DELETED_COLUMN)
    if cluster is None:
        engine = f"ReplacingMergeTree({version}, {deleted})"
    else:
        path = quote_string(REPLICA_PATH.format(database=database, table=name))
        replica = quote_string(REPLICA_NAME)
        engine = f"ReplicatedReplacingMergeTree({path}, {replica}, {version}, {deleted})"
    order_by = ", ".join(map(quote_identifier, key))
    return (
        f"CREATE TABLE IF NOT EXISTS {_qualified(database, name)}{_on_cluster(cluster)} "
        f"({', '.join(defined)}) ENGINE = {engine} ORDER BY ({order_by})"
    )


def clickhouse_truncations_table(database: str, cluster: str | None = None) -> str:
    """The per-table truncate watermarks, newest version wins."""
    if cluster is None:
        engine = "ReplacingMergeTree(version)"
    else:
        path = quote_string(REPLICA_PATH.format(database=database, table=TRUNCATIONS_TABLE))
        engine = f"ReplicatedReplacingMergeTree({path}, {quote_string(REPLICA_NAME)}, version)"
    return (
        f"CREATE TABLE IF NOT EXISTS {_qualified(database, TRUNCATIONS_TABLE)}"
        f"{_on_cluster(cluster)} (table_name String, version {CH_VERSION_TYPE}) "
        f"ENGINE = {engine} ORDER BY table_name"
    )


def distributed_name(table_name: str) -> str:
    """The Distributed table over a replicated table's shards (cluster mode)."""
    return table_name + DISTRIBUTED_SUFFIX


def clickhouse_distributed_table(
    database: str, table_name: str, key: tuple[str, ...], cluster: str
) -> str:
    """`<table>_all`: writes are sharded by a hash of the key, so every version of a row
    lands on the same shard and FINAL (which works per shard) sees them all."""
    sharding = f"cityHash64({', '.join(map(quote_identifier, key))})"
    return (
        f"CREATE TABLE IF NOT EXISTS {_qualified(database, distributed_name(table_name))}"
        f"{_on_cluster(cluster)} AS {_qualified(database, table_name)} "
        f"ENGINE = Distributed({quote_identifier(cluster)}, {quote_identifier(database)}, "
        f"{quote_identifier(table_name)}, {sharding})"
    )


def clickhouse_current_view(
    database: str,
    table: TableSchema,
    cluster: str | None = None,
    columns: Sequence[str] | None = None,
) -> str:
    """`<table>_current`: live rows after FINAL, newer than the truncate watermark. On a
    cluster it reads the Distributed tables, so it sees every shard. `columns` (default:
    the table's): every column of the ClickHouse table, those the source no longer has
    (dropped, renamed) too: a layout from before a change (a replay) leaves none out.

    Recreate it after every column change: ClickHouse freezes a view's columns."""
    selected = ", ".join(map(quote_identifier, columns or table.column_names))
    rows, truncations = table.name, TRUNCATIONS_TABLE
    if cluster is not None:
        rows, truncations = distributed_name(rows), distributed_name(truncations)
    watermark = (
        f"SELECT max(version) FROM {_qualified(database, truncations)} FINAL "
        f"WHERE table_name = {quote_string(table.name)}"
    )
    view = _qualified(database, current_view_name(table.name))
    return (
        f"CREATE OR REPLACE VIEW {view}{_on_cluster(cluster)} AS SELECT {selected} "
        f"FROM {_qualified(database, rows)} FINAL "
        f"WHERE {quote_identifier(DELETED_COLUMN)} = 0 "
        f"AND {quote_identifier(VERSION_COLUMN)} > ifNull(({watermark}), 0)"
    )


def clickhouse_commit_time_column(
    database: str, table_name: str, cluster: str | None = None
) -> str:
    """Add `_commit_time` to a ClickHouse table made before it existed."""
    return (
        f"ALTER TABLE {_qualified(database, table_name)}{_on_cluster(cluster)} "
        f"ADD COLUMN IF NOT EXISTS {quote_identifier(COMMIT_TIME_COLUMN)} {CH_COMMIT_TIME_TYPE}"
    )


def clickhouse_add_column(
    database: str, table_name: str, column: Column, cluster: str | None = None
) -> str:
    """Add a column, of `added_column_type`; rows written before it read `column.missing`
    (`clickhouse_default`), else NULL."""
    return (
        f"ALTER TABLE {_qualified(database, table_name)}{_on_cluster(cluster)} "
        f"ADD COLUMN IF NOT EXISTS {quote_identifier(column.name)} {added_column_type(column)}"
        f"{clickhouse_default(column)}"
    )


def clickhouse_default(column: Column) -> str:
    """` DEFAULT <value>`: what the rows ClickHouse held before `column` was added read,
    Postgres' missing value as ClickHouse holds it (`cdc.sinks.clickhouse.limits`); empty
    when there is none, or when ClickHouse cannot hold it (`Refused`)."""
    storage = storage_column(column)
    if column.missing is None:
        return ""
    check = array_converter(storage) if storage.kind is TypeKind.ARRAY else value_check(storage)
    if check is bytea_bytes:  # the hex text: `\x...`
        return f" DEFAULT unhex({quote_string(column.missing[2:].decode())})"
    try:
        value = (column.missing if check is None else check(column.missing)).decode()
    except (Refused, UnicodeDecodeError):
        return ""
    ch_type = added_column_type(column)
    if storage.kind is TypeKind.BASE and storage.type_oid in (PgType.TIMESTAMP, PgType.TIMESTAMPTZ):
        return f" DEFAULT parseDateTime64BestEffortOrNull({quote_string(value)}, 6, 'UTC')"
    return f" DEFAULT CAST({quote_string(value)} AS {ch_type})"


def added_column_type(column: Column) -> str:
    """The ClickHouse type of a column added to a table: Nullable, as rows written before
    it have no value for it."""
    return clickhouse_type(replace(column, nullable=True))


def clickhouse_make_nullable(
    database: str, table_name: str, column_name: str, current_type: str, cluster: str | None = None
) -> str:
    """Make a column of type `current_type` Nullable."""
    return (
        f"ALTER TABLE {_qualified(database, table_name)}{_on_cluster(cluster)} "
        f"MODIFY COLUMN {quote_identifier(column_name)} {nullable_type(current_type)}"
    )


def clickhouse_retype_column(
    database: str, table_name: str, column_name: str, ch_type: str, cluster: str | None = None
) -> str:
    """Change a (non-key) column to the wider `ch_type`; ClickHouse converts its parts in
    the background and reads them converted meanwhile."""
    return (
        f"ALTER TABLE {_qualified(database, table_name)}{_on_cluster(cluster)} "
        f"MODIFY COLUMN {quote_identifier(column_name)} {ch_type}"
    )


def nullable_type(ch_type: str) -> str:
    """`ch_type` able to hold NULL: as it is if it can already, or is an Array (ClickHouse
    cannot wrap one in Nullable; NULL is stored as [])."""
    if ch_type.startswith(("Nullable(", "LowCardinality(Nullable(", "Array(")):
        return ch_type
    if ch_type.startswith("LowCardinality("):
        return f"LowCardinality(Nullable({ch_type[len('LowCardinality(') : -1]}))"
    return f"Nullable({ch_type})"


def clickhouse_widenings(
    known: Mapping[str, str], layout: TableSchema
) -> tuple[list[Column], list[str]]:
    """What a ClickHouse table with columns `known` (name -> type) needs before rows of
    `layout` go in: the columns to add (added at the source), and the columns to make
    Nullable: those that lost NOT NULL at the source, and those dropped at the source
    (rows written after the drop hold NULL there, as in historic)."""
    added = [c for c in layout.columns if c.name not in known]
    nullable = {c.name for c in layout.columns if c.nullable}
    present = {c.name for c in layout.columns}
    widened = [
        name
        for name, ch_type in known.items()
        if (name in nullable or name not in present) and nullable_type(ch_type) != ch_type
    ]
    return added, widened
