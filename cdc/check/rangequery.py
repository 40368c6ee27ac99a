"""The queries that read one key range of a table in each store: its split points, its
fingerprint (`count(*)` and `sum(row hash)`), and its rows' keys and hashes. Pure SQL
builders (`cdc.check.rowhash` for the hashes, `cdc.check.keyrange` for the ranges); values
are always bound as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from cdc.check.keyrange import (
    Key,
    KeyRange,
    ch_range_filter,
    pg_key_equals,
    pg_key_order,
    pg_range_filter,
)
from cdc.check.rowhash import ch_text, pg_text
from cdc.schema import (
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    TableSchema,
    source_relation,
)
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.ddl import distributed_name

PgQuery = tuple[sql.Composed, list[Any]]
ChQuery = tuple[str, dict[str, Any]]


def _key_outputs(table: TableSchema) -> sql.Composable:
    """The key columns' output texts, in key order."""
    return sql.SQL(", ").join(
        sql.SQL("concat({})").format(sql.Identifier(name)) for name in table.primary_key
    )


def _key_idents(table: TableSchema) -> list[sql.Composable]:
    """The key columns' canonical texts, in key order."""
    return [pg_text(table.column(name)) for name in table.primary_key]


def _key_arrays(table: TableSchema) -> sql.Composable:
    """ARRAY[canonical key texts], ARRAY[key output texts]."""
    return sql.SQL("ARRAY[{}], ARRAY[{}]").format(
        sql.SQL(", ").join(_key_idents(table)), _key_outputs(table)
    )


def _pg_watermark(schema: str) -> sql.Composable:
    """The table's truncate watermark in historic (0: never truncated); the table's name is
    its parameter."""
    return sql.SQL("coalesce((SELECT version FROM {}.{} WHERE table_name = %s), 0)").format(
        sql.Identifier(schema), sql.Identifier(TRUNCATIONS_TABLE)
    )


def pg_watermark(schema: str, table: TableSchema) -> PgQuery:
    """One row: the table's truncate watermark in historic (0: never truncated)."""
    return sql.SQL("SELECT {}").format(_pg_watermark(schema)), [table.name]


def ch_watermark(db: str, table: TableSchema, distributed: bool) -> ChQuery:
    """One row: the table's truncate watermark in ClickHouse (0: never truncated)."""
    _, truncations = _ch_relations(table, distributed)
    return f"SELECT {_ch_watermark(db, truncations)}", {"verify_table": table.name}


def _ch_relations(table: TableSchema, distributed: bool) -> tuple[str, str]:
    """The table's rows and the truncations, as ClickHouse names them (on a cluster: the
    Distributed tables)."""
    if distributed:
        return distributed_name(table.name), distributed_name(TRUNCATIONS_TABLE)
    return table.name, TRUNCATIONS_TABLE


def _ch_watermark(db: str, truncations: str) -> str:
    """The table's truncate watermark in ClickHouse (0: never truncated); the table's name
    is the parameter `verify_table`."""
    return (
        f"ifNull((SELECT max(version) FROM {db}.{quote_identifier(truncations)} FINAL "
        "WHERE table_name = {verify_table:String}), 0)"
    )


def _aliased(expressions: Sequence[sql.Composable]) -> sql.Composable:
    """A select list whose columns are named `_cdc_c0`, `_cdc_c1`, ...: an ORDER BY names
    the table's columns, and an output column of the same name (`"id"::text` is named
    `id`) would take its place."""
    return sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(e, sql.Identifier(f"_cdc_c{i}"))
        for i, e in enumerate(expressions)
    )


def pg_boundaries(table: TableSchema, rng: KeyRange, size: int) -> PgQuery:
    """Every `size`-th key of the range, in the shared order: the inner bounds of its split."""
    where, params = pg_range_filter(table, rng)
    query = sql.SQL(
        "SELECT k FROM (SELECT ARRAY[{outs}] AS k, row_number() OVER (ORDER BY {order}) AS n "
        "FROM {relation} WHERE {where}) numbered WHERE mod(n, %s::bigint) = 0 ORDER BY n"
    ).format(
        outs=_key_outputs(table),
        order=pg_key_order(table),
        relation=source_relation(table),
        where=where,
    )
    return query, [*params, size]


def pg_aggregate(
    relation: tuple[str, str], table: TableSchema, rng: KeyRange, hashes: Sequence[sql.Composable]
) -> PgQuery:
    """`count(*)` and `sum(hash)` per hash expression of the range's rows in `relation`."""
    where, params = pg_range_filter(table, rng)
    sums = sql.SQL(", ").join(sql.SQL("coalesce(sum({}), 0)").format(h) for h in hashes)
    query = sql.SQL("SELECT count(*), {} FROM {} WHERE {}").format(
        sums, source_relation(table, *relation), where
    )
    return query, params


def pg_source_rows(table: TableSchema, rng: KeyRange, hashes: Sequence[sql.Composable]) -> PgQuery:
    """Canonical key texts, key output texts and hashes of the range's source rows."""
    where, params = pg_range_filter(table, rng)
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {}").format(
        _key_arrays(table), sql.SQL(", ").join(hashes), source_relation(table), where
    )
    return query, params


def pg_source_rows_after(
    table: TableSchema, lower: Key | None, size: int, hashes: Sequence[sql.Composable]
) -> PgQuery:
    """Like `pg_source_rows` for the first `size` keys after `lower` (None: from the
    start), in the shared order; each key column's texts in columns of their own."""
    where, params = pg_range_filter(table, KeyRange(lower, None))
    select = [
        *_key_idents(table),
        *(sql.SQL("concat({})").format(sql.Identifier(name)) for name in table.primary_key),
        *hashes,
    ]
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT %s::bigint").format(
        _aliased(select), source_relation(table), where, pg_key_order(table)
    )
    return query, [*params, size]


def pg_historic_rows(
    schema: str, table: TableSchema, rng: KeyRange, hash_: sql.Composable
) -> PgQuery:
    """Like `pg_source_rows` from the historic table, tombstones too: plus `_version` and
    whether the row is live (not deleted, above the truncate watermark)."""
    where, params = pg_range_filter(table, rng)
    query = sql.SQL(
        "SELECT {keys}, {hash}, {version}, NOT {deleted} AND {version} > {watermark} "
        "FROM {schema}.{table} WHERE {where}"
    ).format(
        keys=_key_arrays(table),
        hash=hash_,
        version=sql.Identifier(VERSION_COLUMN),
        deleted=sql.Identifier(DELETED_COLUMN),
        watermark=_pg_watermark(schema),
        schema=sql.Identifier(schema),
        table=sql.Identifier(table.name),
        where=where,
    )
    return query, [table.name, *params]


def pg_historic_aggregate(
    schema: str, table: TableSchema, rng: KeyRange, hash_: sql.Composable, newer: int
) -> PgQuery:
    """The range's fingerprint in historic as of a source snapshot: `count(*)` and
    `sum(hash)` of the live rows older than version `newer`, and the canonical key texts of
    the keys changed since (`_version >= newer`, tombstones too; NULL: none), in one row."""
    where, params = pg_range_filter(table, rng)
    version = sql.Identifier(VERSION_COLUMN)
    older = sql.SQL("{version} < %s::numeric AND NOT {deleted} AND {version} > {watermark}").format(
        version=version, deleted=sql.Identifier(DELETED_COLUMN), watermark=_pg_watermark(schema)
    )
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE {older}), coalesce(sum({hash}) FILTER (WHERE {older}), "
        "0), array_agg(ARRAY[{ids}]) FILTER (WHERE {version} >= %s::numeric) "
        "FROM {schema}.{table} WHERE {where}"
    ).format(
        older=older,
        hash=hash_,
        ids=sql.SQL(", ").join(_key_idents(table)),
        version=version,
        schema=sql.Identifier(schema),
        table=sql.Identifier(table.name),
        where=where,
    )
    return query, [newer, table.name, newer, table.name, newer, *params]


def pg_key_exists(table: TableSchema, key: Key) -> PgQuery:
    """Whether the source holds `key` (a key output text tuple)."""
    query = sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {})").format(
        source_relation(table), pg_key_equals(table)
    )
    return query, list(key)


def ch_aggregate(
    database: str, view: str, table: TableSchema, rng: KeyRange, hash_: str
) -> ChQuery:
    where, params = ch_range_filter(table, rng)
    query = (
        f"SELECT count(), sum(toInt128({hash_})) FROM "
        f"{quote_identifier(database)}.{quote_identifier(view)} WHERE {where}"
    )
    return query, params


def ch_aggregate_before(
    database: str,
    table: TableSchema,
    rng: KeyRange,
    hash_: str,
    newer: int,
    distributed: bool = False,
) -> ChQuery:
    """Like `pg_historic_aggregate` in ClickHouse (the newest row of each key, after
    FINAL). `distributed`: read the cluster's Distributed tables."""
    where, params = ch_range_filter(table, rng)
    rows, truncations = _ch_relations(table, distributed)
    ids = ", ".join(ch_text(table.column(name)) for name in table.primary_key)
    db = quote_identifier(database)
    version = quote_identifier(VERSION_COLUMN)
    older = (
        f"{version} < {{newer:UInt128}} AND {quote_identifier(DELETED_COLUMN)} = 0 "
        f"AND {version} > {_ch_watermark(db, truncations)}"
    )
    query = (
        f"SELECT countIf({older}), sumIf(toInt128({hash_}), {older}), "
        f"groupArrayIf([{ids}], {version} >= {{newer:UInt128}}) "
        f"FROM {db}.{quote_identifier(rows)} FINAL WHERE {where}"
    )
    return query, {**params, "newer": newer, "verify_table": table.name}


def ch_rows(
    database: str, table: TableSchema, rng: KeyRange, hash_: str, distributed: bool = False
) -> ChQuery:
    """Canonical key texts, key texts, hash, `_version` and liveness of the newest row of
    each key in the range, tombstones too (FINAL would hide them). `distributed`: read the
    cluster's Distributed tables."""
    where, params = ch_range_filter(table, rng)
    rows, truncations = _ch_relations(table, distributed)
    columns = [table.column(name) for name in table.primary_key]
    ids = ", ".join(ch_text(c) for c in columns)
    outs = ", ".join(f"toString({quote_identifier(c.name)})" for c in columns)
    db = quote_identifier(database)
    version = quote_identifier(VERSION_COLUMN)
    query = (
        f"SELECT [{ids}], [{outs}], argMax({hash_}, {version}), max({version}), "
        f"argMax({quote_identifier(DELETED_COLUMN)}, {version}) = 0 "
        f"AND max({version}) > {_ch_watermark(db, truncations)} "
        f"FROM {db}.{quote_identifier(rows)} WHERE {where} "
        f"GROUP BY {', '.join(quote_identifier(c.name) for c in columns)}"
    )
    return query, {**params, "verify_table": table.name}
