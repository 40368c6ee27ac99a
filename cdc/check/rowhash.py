"""Row hashes that Postgres and ClickHouse compute alike: pure SQL builders.

A row's hash is the first 8 bytes of the md5 of its canonical text, read as a signed
big-endian 64-bit integer; a range's fingerprint is `count(*)` and `sum(hash)`. The
canonical text concatenates one field per source column. A value whose text may hold any
character (text-like, arrays) is `N` for NULL or `<bytes>:<text>` (the text prefixed with
its length in bytes); the texts of the other forms never hold a comma, and their fields
are `N,` for NULL or `<text>,` (the text computed once, not twice). So no value collides
with NULL or with a different split of the same bytes. The text of a value is chosen per
type so that both engines produce the same bytes:

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
`cdc.stream.session.canonical_dsn`, as the stream and the sinks do.

Arrays have two texts. Against historic (Postgres holds the array as it is) the text is
the output text, `concat(x)`. Against ClickHouse it is the array as ClickHouse can hold it
(`Array(Nullable(element))`, one level per declared dimension): `[`, each element's field
(`N` for NULL, or `<bytes>:<text>` with the element type's text above) joined by `,`,
`]`, nested per dimension (`[[..],[..]]`). ClickHouse cannot hold a NULL array nor
Postgres' lower bounds, so a NULL array has the text of an empty one (`[]`) and
`'[0:1]={1,2}'` that of `{1,2}`; any element that differs still changes the text. So the
source has two row hashes when a table has an array column (`pg_row_hash(..., held=True)`
is the one to compare with ClickHouse's). So has a table with a date or a timestamp:
ClickHouse holds `infinity` and `-infinity` as the ends of its range
(`cdc.sinks.clickhouse.limits`), and the held text is that of the end.

Rows are compared by key range (`cdc.check.keyrange`), with the queries of
`cdc.check.rangequery`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from psycopg import sql

from cdc.schema import Column, TypeKind
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.ddl import quote_string
from cdc.sinks.clickhouse.limits import INFINITE_DATES, INFINITE_TIMESTAMPS
from cdc.sinks.clickhouse.types import PgType, storage_column

NULL_MARK: Final = "N"


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


def _epoch_micros(text: bytes) -> str:
    moment = datetime.fromisoformat(text.decode()).replace(tzinfo=UTC)
    return str((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))


# The texts of -infinity and infinity as ClickHouse holds them: its range's first and last
# date, and its first and last microsecond (since the epoch).
_HELD_INFINITIES: Final[dict[Form, tuple[str, str]]] = {
    Form.DATE: (INFINITE_DATES[b"-infinity"].decode(), INFINITE_DATES[b"infinity"].decode()),
    Form.TIMESTAMP: (
        _epoch_micros(INFINITE_TIMESTAMPS[b"-infinity"]),
        _epoch_micros(INFINITE_TIMESTAMPS[b"infinity"]),
    ),
}


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


def pg_text(
    column: Column, value: sql.Composable | None = None, held: bool = False
) -> sql.Composable:
    """The canonical text of a non-NULL value of `column` (the column itself, or `value`),
    in Postgres; an array's is its output text (see `pg_held_text` for ClickHouse's).
    `held`: a date's or timestamp's +/-infinity as ClickHouse holds it, the end of its
    range (`cdc.sinks.clickhouse.limits.INFINITE_DATES`)."""
    ref = sql.Identifier(column.name) if value is None else value
    form = form_of(column)
    if held and (form is Form.DATE or form is Form.TIMESTAMP):
        first, last = _HELD_INFINITIES[form]
        return sql.SQL(
            "CASE WHEN {ref} = 'infinity' THEN {last} WHEN {ref} = '-infinity' THEN {first} "
            "ELSE {text} END"
        ).format(ref=ref, last=sql.Literal(last), first=sql.Literal(first),
                 text=pg_text(column, value))  # fmt: skip
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
    text = pg_text(element, value, held=True)
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
        return pg_text(column, held=True)
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
    text = pg_text(column, held=held)
    ref, null = sql.Identifier(column.name), sql.Literal(NULL_MARK)
    if _comma_free(column):
        return sql.SQL("CASE WHEN {ref} IS NULL THEN {null} ELSE {text} || ',' END").format(
            ref=ref, null=sql.Literal(NULL_MARK + ","), text=text
        )
    return sql.SQL(
        "CASE WHEN {ref} IS NULL THEN {null} ELSE octet_length({text})::text || ':' || {text} END"
    ).format(ref=ref, null=null, text=text)


def ch_field(column: Column) -> str:
    text = ch_text(column)
    if form_of(column) is Form.ARRAY:
        return f"concat(toString(length({text})), ':', {text})"
    ref = quote_identifier(column.name)
    if _comma_free(column):
        return f"if(isNull({ref}), {quote_string(NULL_MARK + ',')}, concat({text}, ','))"
    null = quote_string(NULL_MARK)
    return f"if(isNull({ref}), {null}, concat(toString(length({text})), ':', {text}))"


def _comma_free(column: Column) -> bool:
    """Whether the column's canonical texts never hold a comma (numbers, hex, uuids, dates:
    a field ends at the comma after it)."""
    return form_of(column) not in (Form.TEXT, Form.ARRAY)


def held_differently(columns: Sequence[Column]) -> bool:
    """Whether ClickHouse may hold some of `columns` mapped (arrays; dates and timestamps,
    whose infinities it holds as the ends of its range), so that the row hash of what it
    holds differs from the exact one."""
    return any(form_of(c) in (Form.ARRAY, Form.DATE, Form.TIMESTAMP) for c in columns)


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
