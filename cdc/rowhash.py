"""Row hashes and key ranges that Postgres and ClickHouse compute alike: pure SQL builders.

A row's hash is the first 8 bytes of the md5 of its canonical text, read as a signed
big-endian 64-bit integer; a range's fingerprint is `count(*)` and `sum(hash)`. The
canonical text concatenates, per source column, `N` for NULL or `<bytes>:<text>` (the
value's text prefixed with its length in bytes), so no value collides with NULL or with
a different split of the same bytes. The text of a value is chosen per type so that both
engines produce the same bytes:

| form      | Postgres                                  | ClickHouse                          |
|-----------|-------------------------------------------|-------------------------------------|
| integer   | `x::text`                                 | `toString(x)`                       |
| numeric   | `trim_scale(x)::text`                     | `toString(x)` (Decimal, trimmed)    |
| float     | `'NaN'` or hex of `float8send`/`float4send` | `'NaN'` or hex of the IEEE bits   |
| bool      | `0` / `1`                                 | `toString(toUInt8(x))`              |
| uuid      | `x::text`                                 | `toString(x)`                       |
| date      | `x::text` (ISO DateStyle)                 | `toString(x)`                       |
| timestamp | epoch microseconds                        | `toUnixTimestamp64Micro(x)`         |
| bytea     | `encode(x, 'hex')`                        | `lower(hex(x))` (raw bytes)         |
| text-like | the output text, `concat(x)`              | `x` (the String holds that text)    |
| array     | the output text, `concat(x)`              | not compared: a NULL array is `[]`  |

"Text-like" is every type ClickHouse stores as the Postgres text (`cdc.typemap`): text,
json, enums, time, interval, network types, composites, ... Postgres texts depend on the
session's DateStyle, IntervalStyle and extra_float_digits: read through
`cdc.stream.canonical_dsn`, as the stream and the sinks do.

Key ranges `(lower, upper]` are compared in an order both engines share: numbers, dates and
timestamps natively; uuids by their text (ClickHouse orders UUIDs differently); text-like
keys by bytes (`COLLATE "C"` in Postgres). Keys of other types (float, bytea, arrays) have
no shared order: such a table is compared in Postgres only. Range bounds are the keys'
output texts; values are always bound as parameters (`%s` in Postgres, `{name:String}` in
ClickHouse).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from psycopg import sql

from cdc.clickhouse import quote_identifier
from cdc.ddl import distributed_name, quote_string
from cdc.schema import (
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    Column,
    TableSchema,
    TypeKind,
)
from cdc.typemap import PgType, clickhouse_type, storage_column

Key = tuple[str, ...]  # the key columns' output texts, in key order
NULL_MARK: Final = "N"
TEXT_OID: Final = 25
VARCHAR_OID: Final = 1043


class Form(enum.Enum):
    INTEGER = "integer"
    NUMERIC = "numeric"
    FLOAT8 = "float8"
    FLOAT4 = "float4"
    BOOL = "bool"
    UUID = "uuid"
    DATE = "date"
    TIMESTAMP = "timestamp"
    BYTEA = "bytea"
    TEXT = "text"
    ARRAY = "array"


_BASE_FORMS: Final[dict[int, Form]] = {
    PgType.INT2: Form.INTEGER,
    PgType.INT4: Form.INTEGER,
    PgType.INT8: Form.INTEGER,
    PgType.OID: Form.INTEGER,
    PgType.NUMERIC: Form.NUMERIC,
    PgType.FLOAT8: Form.FLOAT8,
    PgType.FLOAT4: Form.FLOAT4,
    PgType.BOOL: Form.BOOL,
    PgType.UUID: Form.UUID,
    PgType.DATE: Form.DATE,
    PgType.TIMESTAMP: Form.TIMESTAMP,
    PgType.TIMESTAMPTZ: Form.TIMESTAMP,
    PgType.BYTEA: Form.BYTEA,
}
# Forms whose values both engines order the same way, compared natively.
_NATIVE_ORDER: Final = {Form.INTEGER, Form.NUMERIC, Form.BOOL, Form.DATE, Form.TIMESTAMP}


def form_of(column: Column) -> Form:
    storage = storage_column(column)
    if storage.kind is TypeKind.ARRAY:
        return Form.ARRAY
    if storage.kind is TypeKind.BASE:
        return _BASE_FORMS.get(storage.type_oid, Form.TEXT)
    return Form.TEXT  # enums, composites, ranges, ...: ClickHouse holds the Postgres text


def clickhouse_comparable(column: Column) -> bool:
    """Whether ClickHouse holds the column in a form whose hash matches Postgres'."""
    return form_of(column) is not Form.ARRAY


# -- per-column texts -----------------------------------------------------------------------


def pg_text(column: Column) -> sql.Composable:
    """The canonical text of a non-NULL value of `column`, in Postgres."""
    ref = sql.Identifier(column.name)
    form = form_of(column)
    if form is Form.INTEGER or form is Form.UUID or form is Form.DATE:
        return sql.SQL("{}::text").format(ref)
    if form is Form.NUMERIC:
        return sql.SQL("trim_scale({})::text").format(ref)
    if form is Form.FLOAT8 or form is Form.FLOAT4:
        width = sql.SQL("float8" if form is Form.FLOAT8 else "float4")
        return sql.SQL(
            "CASE WHEN {ref} = 'NaN'::{w} THEN 'NaN' ELSE encode({w}send({ref}::{w}), 'hex') END"
        ).format(ref=ref, w=width)
    if form is Form.BOOL:
        return sql.SQL("CASE WHEN {} THEN '1' ELSE '0' END").format(ref)
    if form is Form.TIMESTAMP:
        return sql.SQL("trim_scale(extract(epoch FROM {}) * 1000000)::text").format(ref)
    if form is Form.BYTEA:
        return sql.SQL("encode({}, 'hex')").format(ref)
    return sql.SQL("concat({})").format(ref)  # the type's output function


def ch_text(column: Column) -> str | None:
    """The canonical text of a non-NULL value of `column`, in ClickHouse (None: none)."""
    ref = f"assumeNotNull({quote_identifier(column.name)})"
    form = form_of(column)
    if form is Form.ARRAY:
        return None
    if form in (Form.INTEGER, Form.NUMERIC, Form.UUID, Form.DATE):
        return f"toString({ref})"
    if form is Form.FLOAT8 or form is Form.FLOAT4:
        return f"if(isNaN({ref}), 'NaN', lower(hex(reverse(reinterpretAsFixedString({ref})))))"
    if form is Form.BOOL:
        return f"toString(toUInt8({ref}))"
    if form is Form.TIMESTAMP:
        return f"toString(toUnixTimestamp64Micro({ref}))"
    if form is Form.BYTEA:
        return f"lower(hex({ref}))"
    return ref


def pg_field(column: Column) -> sql.Composable:
    text = pg_text(column)
    return sql.SQL(
        "CASE WHEN {ref} IS NULL THEN {null} ELSE octet_length({text})::text || ':' || {text} END"
    ).format(ref=sql.Identifier(column.name), null=sql.Literal(NULL_MARK), text=text)


def ch_field(column: Column) -> str:
    text = ch_text(column)
    if text is None:
        raise ValueError(f"column {column.name!r} has no ClickHouse form")
    null = quote_string(NULL_MARK)
    return (
        f"if(isNull({quote_identifier(column.name)}), {null}, "
        f"concat(toString(length({text})), ':', {text}))"
    )


def pg_row_hash(columns: Sequence[Column]) -> sql.Composable:
    """The signed 64-bit hash of a row's canonical text, in Postgres."""
    text = sql.SQL(" || ").join(sql.SQL("({})").format(pg_field(c)) for c in columns)
    return sql.SQL("('x' || left(md5({}), 16))::bit(64)::bigint").format(text)


def ch_row_hash(columns: Sequence[Column]) -> str:
    """The same hash in ClickHouse (only for columns that are `clickhouse_comparable`)."""
    fields = [ch_field(c) for c in columns]
    text = fields[0] if len(fields) == 1 else f"concat({', '.join(fields)})"
    return f"reinterpretAsInt64(reverse(substring(MD5({text}), 1, 8)))"


# -- key order ------------------------------------------------------------------------------


def _pg_order(column: Column) -> sql.Composable:
    """The column's sort expression in Postgres."""
    ref = sql.Identifier(column.name)
    if form_of(column) is not Form.TEXT:
        return ref
    if storage_column(column).type_oid in (TEXT_OID, VARCHAR_OID):
        return sql.SQL('{} COLLATE "C"').format(ref)
    return sql.SQL('concat({}) COLLATE "C"').format(ref)


def _pg_bound(column: Column, value: sql.Composable) -> sql.Composable:
    """`value` (a key output text) as a value of the column's sort expression."""
    if form_of(column) is Form.TEXT:
        return sql.SQL('{}::text COLLATE "C"').format(value)
    return sql.SQL("{}::{}").format(value, sql.SQL(column.pg_type))


def ch_order(column: Column, param: str) -> tuple[str, str] | None:
    """(sort expression, bound value) in ClickHouse, or None when no order is shared."""
    ref = quote_identifier(column.name)
    bound = f"{{{param}:String}}"
    form = form_of(column)
    if form is Form.TIMESTAMP:
        return ref, f"parseDateTime64BestEffort({bound}, 6, 'UTC')"
    if form in _NATIVE_ORDER:
        return ref, f"CAST({bound} AS {clickhouse_type(replace(column, nullable=False))})"
    if form is Form.UUID:
        return f"toString({ref})", bound
    if form is Form.TEXT:
        return ref, bound
    return None


def clickhouse_key_problem(table: TableSchema) -> str | None:
    """Why ClickHouse cannot be compared by key range, or None when it can."""
    for name in table.primary_key:
        column = table.column(name)
        if ch_order(column, "p") is None:
            return f"key column {name} ({column.pg_type}) has no order shared with ClickHouse"
    return None


@dataclass(frozen=True)
class KeyRange:
    """Keys above `lower` (None: from the start) up to and including `upper` (None: to the
    end). `root` numbers the top-level range a sub-range was split from."""

    lower: Key | None
    upper: Key | None
    root: int = 0


def ranges_between(
    lower: Key | None, upper: Key | None, bounds: Sequence[Key], root: int = 0
) -> list[KeyRange]:
    """Split `(lower, upper]` at `bounds` (ascending keys inside it)."""
    edges = [lower, *bounds, upper]
    return [KeyRange(edges[i], edges[i + 1], root) for i in range(len(edges) - 1)]


def _row(items: Sequence[sql.Composable]) -> sql.Composable:
    joined = sql.SQL(", ").join(items)
    return joined if len(items) == 1 else sql.SQL("ROW({})").format(joined)


def pg_range_filter(
    table: TableSchema, rng: KeyRange, inline: bool = False
) -> tuple[sql.Composable, list[str]]:
    """The predicate `key in (lower, upper]` and its parameters. `inline`: the values as
    quoted literals instead, no parameters (for a predicate handed on as SQL text)."""
    columns = [table.column(name) for name in table.primary_key]
    parts: list[sql.Composable] = []
    params: list[str] = []
    for op, bound in ((">", rng.lower), ("<=", rng.upper)):
        if bound is None:
            continue
        values = [
            _pg_bound(column, sql.Literal(value) if inline else sql.Placeholder())
            for column, value in zip(columns, bound, strict=True)
        ]
        parts.append(
            sql.SQL("{} {} {}").format(
                _row([_pg_order(c) for c in columns]), sql.SQL(op), _row(values)
            )
        )
        if not inline:
            params.extend(bound)
    return (sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")), params


def ch_range_filter(table: TableSchema, rng: KeyRange) -> tuple[str, dict[str, str]]:
    """The predicate `key in (lower, upper]` in ClickHouse and its parameters."""
    parts: list[str] = []
    params: dict[str, str] = {}
    for op, prefix, bound in ((">", "lo", rng.lower), ("<=", "hi", rng.upper)):
        if bound is None:
            continue
        exprs, values = [], []
        for i, (name, value) in enumerate(zip(table.primary_key, bound, strict=True)):
            order = ch_order(table.column(name), f"{prefix}{i}")
            if order is None:
                raise ValueError(f"key column {name!r} has no order shared with ClickHouse")
            exprs.append(order[0])
            values.append(order[1])
            params[f"{prefix}{i}"] = value
        if len(exprs) == 1:
            parts.append(f"{exprs[0]} {op} {values[0]}")
        else:
            parts.append(f"tuple({', '.join(exprs)}) {op} tuple({', '.join(values)})")
    return (" AND ".join(parts) if parts else "1"), params


# -- queries --------------------------------------------------------------------------------

PgQuery = tuple[sql.Composed, list[Any]]
ChQuery = tuple[str, dict[str, Any]]


def _key_arrays(table: TableSchema) -> sql.Composable:
    """ARRAY[canonical key texts], ARRAY[key output texts]."""
    columns = [table.column(name) for name in table.primary_key]
    return sql.SQL("ARRAY[{}], ARRAY[{}]").format(
        sql.SQL(", ").join(pg_text(c) for c in columns),
        sql.SQL(", ").join(sql.SQL("concat({})").format(sql.Identifier(c.name)) for c in columns),
    )


def pg_boundaries(table: TableSchema, rng: KeyRange, size: int) -> PgQuery:
    """Every `size`-th key of the range, in the shared order: the inner bounds of its split."""
    where, params = pg_range_filter(table, rng)
    columns = [table.column(name) for name in table.primary_key]
    query = sql.SQL(
        "SELECT k FROM (SELECT ARRAY[{outs}] AS k, row_number() OVER (ORDER BY {order}) AS n "
        "FROM {schema}.{table} WHERE {where}) numbered WHERE mod(n, %s::bigint) = 0 ORDER BY n"
    ).format(
        outs=sql.SQL(", ").join(
            sql.SQL("concat({})").format(sql.Identifier(c.name)) for c in columns
        ),
        order=sql.SQL(", ").join(_pg_order(c) for c in columns),
        schema=sql.Identifier(table.schema),
        table=sql.Identifier(table.name),
        where=where,
    )
    return query, [*params, size]


def pg_aggregate(
    relation: tuple[str, str], table: TableSchema, rng: KeyRange, hashes: Sequence[sql.Composable]
) -> PgQuery:
    """`count(*)` and `sum(hash)` per hash expression of the range's rows in `relation`."""
    where, params = pg_range_filter(table, rng)
    sums = sql.SQL(", ").join(sql.SQL("coalesce(sum({}), 0)").format(h) for h in hashes)
    query = sql.SQL("SELECT count(*), {} FROM {}.{} WHERE {}").format(
        sums, sql.Identifier(relation[0]), sql.Identifier(relation[1]), where
    )
    return query, params


def pg_source_rows(table: TableSchema, rng: KeyRange, hashes: Sequence[sql.Composable]) -> PgQuery:
    """Canonical key texts, key output texts and hashes of the range's source rows."""
    where, params = pg_range_filter(table, rng)
    query = sql.SQL("SELECT {}, {} FROM {}.{} WHERE {}").format(
        _key_arrays(table),
        sql.SQL(", ").join(hashes),
        sql.Identifier(table.schema),
        sql.Identifier(table.name),
        where,
    )
    return query, params


def pg_historic_rows(
    schema: str, table: TableSchema, rng: KeyRange, hash_: sql.Composable
) -> PgQuery:
    """Like `pg_source_rows` from the historic table, tombstones too: plus `_version` and
    whether the row is live (not deleted, above the truncate watermark)."""
    where, params = pg_range_filter(table, rng)
    query = sql.SQL(
        "SELECT {keys}, {hash}, {version}, NOT {deleted} AND {version} > coalesce("
        "(SELECT version FROM {schema}.{truncations} WHERE table_name = %s), 0) "
        "FROM {schema}.{table} WHERE {where}"
    ).format(
        keys=_key_arrays(table),
        hash=hash_,
        version=sql.Identifier(VERSION_COLUMN),
        deleted=sql.Identifier(DELETED_COLUMN),
        schema=sql.Identifier(schema),
        truncations=sql.Identifier(TRUNCATIONS_TABLE),
        table=sql.Identifier(table.name),
        where=where,
    )
    return query, [table.name, *params]


def pg_key_exists(table: TableSchema, key: Key) -> PgQuery:
    """Whether the source holds `key` (a key output text tuple)."""
    columns = [table.column(name) for name in table.primary_key]
    query = sql.SQL("SELECT EXISTS (SELECT FROM {}.{} WHERE {} = {})").format(
        sql.Identifier(table.schema),
        sql.Identifier(table.name),
        _row([_pg_order(c) for c in columns]),
        _row([_pg_bound(c, sql.Placeholder()) for c in columns]),
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


def ch_rows(
    database: str, table: TableSchema, rng: KeyRange, hash_: str, distributed: bool = False
) -> ChQuery:
    """Canonical key texts, key texts, hash, `_version` and liveness of the newest row of
    each key in the range, tombstones too (FINAL would hide them). `distributed`: read the
    cluster's Distributed tables."""
    where, params = ch_range_filter(table, rng)
    rows, truncations = table.name, TRUNCATIONS_TABLE
    if distributed:
        rows, truncations = distributed_name(rows), distributed_name(truncations)
    columns = [table.column(name) for name in table.primary_key]
    ids = ", ".join(ch_text(c) or "" for c in columns)
    outs = ", ".join(f"toString({quote_identifier(c.name)})" for c in columns)
    db = quote_identifier(database)
    version = quote_identifier(VERSION_COLUMN)
    watermark = (
        f"SELECT max(version) FROM {db}.{quote_identifier(truncations)} FINAL "
        "WHERE table_name = {verify_table:String}"
    )
    query = (
        f"SELECT [{ids}], [{outs}], argMax({hash_}, {version}), max({version}), "
        f"argMax({quote_identifier(DELETED_COLUMN)}, {version}) = 0 "
        f"AND max({version}) > ifNull(({watermark}), 0) "
        f"FROM {db}.{quote_identifier(rows)} WHERE {where} "
        f"GROUP BY {', '.join(quote_identifier(c.name) for c in columns)}"
    )
    return query, {**params, "verify_table": table.name}
