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
| array     | see below                                 | see below                           |

"Text-like" is every type ClickHouse stores as the Postgres text
(`cdc.sinks.clickhouse.types`): text,
json, enums, time, interval, network types, composites, ... Postgres texts depend on the
session's DateStyle, IntervalStyle and extra_float_digits: read through
`cdc.stream.replication.canonical_dsn`, as the stream and the sinks do.

Arrays have two texts. Against historic (Postgres holds the array as it is) the text is
the output text, `concat(x)`. Against ClickHouse it is the array as ClickHouse can hold it
(`Array(Nullable(element))`, one level per declared dimension): `[`, each element's field
(`N` for NULL, or `<bytes>:<text>` with the element type's text above) joined by `,`,
`]`, nested per dimension (`[[..],[..]]`). ClickHouse cannot hold a NULL array nor
Postgres' lower bounds, so a NULL array has the text of an empty one (`[]`) and
`'[0:1]={1,2}'` that of `{1,2}`; any element that differs still changes the text. So the
source has two row hashes when a table has an array column (`pg_row_hash(..., held=True)`
is the one to compare with ClickHouse's).

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

from cdc.schema import (
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    Column,
    TableSchema,
    TypeKind,
)
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.types import PgType, clickhouse_type, storage_column
from cdc.sinks.ddl import distributed_name, quote_string

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


def array_shape(column: Column) -> tuple[int, Column]:
    """(dimensions, element column) of an array column, as ClickHouse nests it."""
    dimensions = 0
    column = storage_column(column)
    while column.kind is TypeKind.ARRAY:
        if column.element is None:
            raise ValueError(f"array column {column.name!r} has no element type")
        dimensions += 1
        column = storage_column(column.element)
    return dimensions, column


# -- per-column texts -----------------------------------------------------------------------


def pg_text(column: Column, value: sql.Composable | None = None) -> sql.Composable:
    """The canonical text of a non-NULL value of `column` (the column itself, or `value`),
    in Postgres; an array's is its output text (see `pg_held_text` for ClickHouse's)."""
    ref = sql.Identifier(column.name) if value is None else value
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


def _pg_element_field(element: Column, value: sql.Composable) -> sql.Composable:
    text = pg_text(element, value)
    return sql.SQL(
        "CASE WHEN {v} IS NULL THEN {null} ELSE octet_length({text})::text || ':' || {text} END"
    ).format(v=value, null=sql.Literal(NULL_MARK), text=text)


def _pg_brackets(
    bracket: str, ordinal: sql.Composable, strides: Sequence[sql.Composable]
) -> sql.Composable:
    """`bracket` repeated once per sub-array that starts (`[`) or ends (`]`) at the element
    numbered `ordinal` (from 1) of a flattened array, given each level's stride."""
    position = sql.SQL("{} - 1" if bracket == "[" else "{}").format(ordinal)
    counts = sql.SQL(" + ").join(
        sql.SQL("CASE WHEN mod({}, {}) = 0 THEN 1 ELSE 0 END").format(position, stride)
        for stride in strides
    )
    return sql.SQL("repeat({}, {})").format(sql.Literal(bracket), counts)


def pg_held_text(column: Column) -> sql.Composable:
    """The canonical text of a value of `column` as ClickHouse holds it, in Postgres. For an
    array: `[` its elements' fields (`N`, or `<bytes>:<text>`) joined by `,` `]`, nested per
    dimension, lower bounds dropped, and a NULL array as `[]` (ClickHouse cannot hold a
    NULL array). Other columns: `pg_text`."""
    if form_of(column) is not Form.ARRAY:
        return pg_text(column)
    dimensions, element = array_shape(column)
    ref = sql.Identifier(column.name)
    value, ordinal = sql.SQL("_cdc_u._cdc_value"), sql.SQL("_cdc_u._cdc_ordinal")
    field = _pg_element_field(element, value)
    if dimensions > 1:
        lengths = [
            sql.SQL("array_length({}, {})").format(ref, sql.Literal(d))
            for d in range(2, dimensions + 1)
        ]
        # Elements per sub-array at each level below the top: products of the inner lengths.
        strides = [sql.SQL(" * ").join(lengths[i:]) for i in range(len(lengths))]
        field = sql.SQL("{} || {} || {}").format(
            _pg_brackets("[", ordinal, strides), field, _pg_brackets("]", ordinal, strides)
        )
    return sql.SQL(
        "(SELECT '[' || coalesce(string_agg({field}, ',' ORDER BY {ordinal}), '') || ']' "
        "FROM unnest({ref}) WITH ORDINALITY AS _cdc_u(_cdc_value, _cdc_ordinal))"
    ).format(field=field, ordinal=ordinal, ref=ref)


def ch_text(column: Column, value: str | None = None) -> str:
    """The canonical text of a non-NULL value of `column` (the column itself, or `value`),
    in ClickHouse: the same bytes as `pg_held_text`."""
    ref = f"assumeNotNull({quote_identifier(column.name)})" if value is None else value
    form = form_of(column)
    if form is Form.ARRAY:
        dimensions, element = array_shape(column)
        return _ch_array_text(quote_identifier(column.name), dimensions, element)
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


def _ch_array_text(ref: str, dimensions: int, element: Column, level: int = 1) -> str:
    item = f"_cdc_item{level}"
    if level < dimensions:
        inner = _ch_array_text(item, dimensions, element, level + 1)
    else:
        text = ch_text(element, f"assumeNotNull({item})")
        null = quote_string(NULL_MARK)
        inner = f"if(isNull({item}), {null}, concat(toString(length({text})), ':', {text}))"
    return f"concat('[', arrayStringConcat(arrayMap({item} -> {inner}, {ref}), ','), ']')"


def pg_field(column: Column, held: bool = False) -> sql.Composable:
    """The column's part of the canonical row text in Postgres; `held`: of the value as
    ClickHouse holds it (an array is never NULL there)."""
    if held and form_of(column) is Form.ARRAY:
        text = pg_held_text(column)
        return sql.SQL("octet_length({text})::text || ':' || {text}").format(text=text)
    text = pg_text(column)
    return sql.SQL(
        "CASE WHEN {ref} IS NULL THEN {null} ELSE octet_length({text})::text || ':' || {text} END"
    ).format(ref=sql.Identifier(column.name), null=sql.Literal(NULL_MARK), text=text)


def ch_field(column: Column) -> str:
    text = ch_text(column)
    if form_of(column) is Form.ARRAY:
        return f"concat(toString(length({text})), ':', {text})"
    null = quote_string(NULL_MARK)
    return (
        f"if(isNull({quote_identifier(column.name)}), {null}, "
        f"concat(toString(length({text})), ':', {text}))"
    )


def held_differently(columns: Sequence[Column]) -> bool:
    """Whether ClickHouse holds some of `columns` mapped (arrays), so that the row hash of
    what it holds differs from the exact one."""
    return any(form_of(c) is Form.ARRAY for c in columns)


def pg_row_hash(columns: Sequence[Column], held: bool = False) -> sql.Composable:
    """The signed 64-bit hash of a row's canonical text, in Postgres; `held`: of the row as
    ClickHouse holds it (compare with `ch_row_hash`)."""
    text = sql.SQL(" || ").join(sql.SQL("({})").format(pg_field(c, held)) for c in columns)
    return sql.SQL("('x' || left(md5({}), 16))::bit(64)::bigint").format(text)


def ch_row_hash(columns: Sequence[Column]) -> str:
    """The same hash in ClickHouse (equal to `pg_row_hash(columns, held=True)`)."""
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


def pg_next_boundary(table: TableSchema, lower: Key | None, size: int) -> PgQuery:
    """The `size`-th key after `lower` (None: from the start) in the shared order: the upper
    bound of the range of `size` keys that starts there; no row when fewer are left."""
    where, params = pg_range_filter(table, KeyRange(lower, None))
    columns = [table.column(name) for name in table.primary_key]
    query = sql.SQL(
        "SELECT ARRAY[{outs}] FROM {schema}.{table} WHERE {where} ORDER BY {order} "
        "OFFSET %s::bigint LIMIT 1"
    ).format(
        outs=sql.SQL(", ").join(
            sql.SQL("concat({})").format(sql.Identifier(c.name)) for c in columns
        ),
        schema=sql.Identifier(table.schema),
        table=sql.Identifier(table.name),
        where=where,
        order=sql.SQL(", ").join(_pg_order(c) for c in columns),
    )
    return query, [*params, size - 1]


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
    ids = ", ".join(ch_text(c) for c in columns)
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
