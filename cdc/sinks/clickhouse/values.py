"""Encode rows of Postgres text values into ClickHouse TabSeparated lines (the hot path).

`RowEncoder(table)` chooses one converter per column once; `encode(values)` then turns a
row of Postgres text values (`bytes`, `None` for NULL, as the replication stream and a
text-mode COPY/SELECT in a UTC session produce them) into one TSV line **without** the
trailing newline, and `encode_versioned` appends `_version`, `_is_deleted` and the
newline. Insert the lines with `INSERT_SETTINGS` in TabSeparated format into the columns
`insert_columns`.

Values ClickHouse would store wrongly are refused with VALUE_OUT_OF_RANGE naming the
column, the value and the reason: dates and timestamps outside ClickHouse's documented
range 1900-01-01..2299-12-31 (also infinity, BC and 5-digit years), numeric NaN/Infinity
or more digits than the Decimal holds (ClickHouse truncates extra fraction digits
silently), arrays whose nesting differs from the column's, and a NULL key.

NULL is `\\N` in a Nullable column and `[]` in an array column. A tombstone row carries
only its key: a NOT NULL column without a value gets its type's default written
explicitly, because `input_format_tsv_empty_as_default` would turn an empty string in a
Nullable(String) column into NULL. Postgres' array lower bounds (`[0:1]={...}`) are not
kept: ClickHouse arrays always start at 1.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from cdc.errors import CdcError, ErrorKind
from cdc.load.copytext import escape
from cdc.schema import (
    COMMIT_TIME_COLUMN,
    DELETED_COLUMN,
    VERSION_COLUMN,
    Column,
    TableSchema,
    TypeKind,
)
from cdc.sinks.clickhouse.types import (
    ENUM_TYPE,
    STRING,
    UNBOUNDED_NUMERIC,
    PgType,
    clickhouse_type,
    storage_column,
)

INSERT_SETTINGS: Final[dict[str, Any]] = {
    "date_time_input_format": "best_effort",  # 'basic' rejects every '+00' offset
    "input_format_tsv_empty_as_default": 0,
    "input_format_null_as_default": 0,
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
    # Every insert holds one row per key (a batch's last images, a backfill chunk): nothing
    # to collapse while inserting, and FINAL reads collapse across parts anyway. Measured:
    # a third less time per inserted row.
    "optimize_on_insert": 0,
}
NULL: Final = b"\\N"
MAX_VERSION: Final = (1 << 128) - 1  # ClickHouse turns 2**128 into 0 silently
_SHOWN_VALUE_CHARS: Final = 60
_MIN_DATE, _MAX_DATE = b"1900-01-01", b"2299-12-31"
_MIN_YEAR, _MAX_YEAR = b"1900", b"2299"
_MIN_TIMESTAMP: Final = datetime(1900, 1, 1, tzinfo=UTC)
_MAX_TIMESTAMP: Final = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_DIGIT_9: Final = ord("9")
_DEFAULTS: Final[dict[str, bytes]] = {
    STRING: b"",
    ENUM_TYPE: b"",
    "Bool": b"false",
    "UUID": b"00000000-0000-0000-0000-000000000000",
    "Date32": b"1970-01-01",
    "DateTime64(6, 'UTC')": b"1970-01-01 00:00:00",
}
_BARE_ELEMENTS: Final = frozenset(  # written unquoted inside array literals
    {
        PgType.INT2,
        PgType.INT4,
        PgType.INT8,
        PgType.OID,
        PgType.FLOAT4,
        PgType.FLOAT8,
        PgType.NUMERIC,
    }
)


class Refused(ValueError):
    """A value ClickHouse cannot store; the message says why ("is outside ...")."""


# What a converter may raise for a value it cannot encode.
_VALUE_ERRORS: Final = (ValueError, TypeError, IndexError, KeyError)

Converter: TypeAlias = Callable[[bytes], bytes]
ArrayItems: TypeAlias = list["bytes | ArrayItems | None"]


def quote(value: bytes) -> bytes:
    """A ClickHouse string literal inside an array, valid as-is in a TSV field."""
    return b"'" + escape(value).replace(b"'", b"\\'") + b"'"


def _date(value: bytes) -> bytes:
    if len(value) == len(_MIN_DATE) and _MIN_DATE <= value <= _MAX_DATE:
        return value
    raise Refused("is outside ClickHouse's Date32 range 1900-01-01..2299-12-31")


def _timestamp(value: bytes) -> bytes:
    year = value[:4]
    if value[4:5] == b"-" and _MIN_YEAR < year < _MAX_YEAR and value[-1] <= _DIGIT_9:
        return value
    if value[4:5] == b"-" and year in (_MIN_YEAR, _MAX_YEAR) and value[-1] <= _DIGIT_9:
        moment = datetime.fromisoformat(value.decode())  # an offset may cross the boundary
        if _MIN_TIMESTAMP <= moment.replace(tzinfo=moment.tzinfo or UTC) <= _MAX_TIMESTAMP:
            return value
    raise Refused("is outside ClickHouse's DateTime64 range 1900-01-01..2299-12-31 UTC")


def _bounded_decimal(value: bytes) -> bytes:
    if value[-1] <= _DIGIT_9:
        return value
    raise Refused("cannot be stored in a ClickHouse Decimal")


def _unbounded_decimal(value: bytes) -> bytes:
    integer_max = UNBOUNDED_NUMERIC[0] - UNBOUNDED_NUMERIC[1]
    if len(value) <= min(integer_max, UNBOUNDED_NUMERIC[1]) and value[-1] <= _DIGIT_9:
        return value
    _bounded_decimal(value)
    integer, _, fraction = value.lstrip(b"-").partition(b".")
    if len(integer.lstrip(b"0")) > integer_max or len(fraction.rstrip(b"0")) > UNBOUNDED_NUMERIC[1]:
        raise Refused(
            f"has more than {integer_max} integer or {UNBOUNDED_NUMERIC[1]} fraction digits, "
            f"the most Decimal{UNBOUNDED_NUMERIC} (for unbounded numeric) holds; give the column "
            "a precision and scale"
        )
    return value


def _bytea(value: bytes) -> bytes:
    if value[:2] != b"\\x":
        raise Refused("is not bytea hex output (bytea_output must be 'hex')")
    return binascii.a2b_hex(value[2:])


def _bool_literal(value: bytes) -> bytes:
    return {b"t": b"true", b"f": b"false"}[value]


def _check(column: Column) -> Converter | None:
    """The check (or transform, for bytea) of one value of a resolved column; None: none."""
    if column.kind is not TypeKind.BASE:
        return None
    if column.type_oid == PgType.NUMERIC:
        return _bounded_decimal if column.type_modifier >= 0 else _unbounded_decimal
    return _CHECKS.get(column.type_oid)


_CHECKS: Final[dict[int, Converter]] = {
    PgType.DATE: _date,
    PgType.TIMESTAMP: _timestamp,
    PgType.TIMESTAMPTZ: _timestamp,
    PgType.BYTEA: _bytea,
}


def parse_array(text: bytes, delimiter: bytes = b",") -> ArrayItems:
    """Postgres array output (`{1,NULL,"a b"}`, nested, optional `[lo:hi]=` bounds)."""
    if text[:1] == b"[":
        text = text[text.index(b"=") + 1 :]
    items, end = _parse_level(text, 0, delimiter[0])
    if end != len(text):
        raise Refused("is not a Postgres array text")
    return items


def _parse_level(text: bytes, pos: int, delimiter: int) -> tuple[ArrayItems, int]:
    if text[pos : pos + 1] != b"{":
        raise Refused("is not a Postgres array text")
    pos += 1
    items: ArrayItems = []
    if text[pos : pos + 1] == b"}":
        return items, pos + 1
    while True:
        first = text[pos : pos + 1]
        item: bytes | ArrayItems | None
        if first == b"{":
            item, pos = _parse_level(text, pos, delimiter)
        elif first == b'"':
            parts = []
            pos += 1
            while True:
                close = text.find(b'"', pos)
                backslash = text.find(b"\\", pos, close)
                if close < 0:
                    raise Refused("has an unterminated quoted array element")
                if backslash < 0:
                    parts.append(text[pos:close])
                    pos = close + 1
                    break
                parts.append(text[pos:backslash])
                parts.append(text[backslash + 1 : backslash + 2])
                pos = backslash + 2
            item = b"".join(parts)
        else:
            end = pos
            while end < len(text) and text[end] != delimiter and text[end] != ord("}"):
                end += 1
            item = text[pos:end]
            if item.upper() == b"NULL":
                item = None
            pos = end
        items.append(item)
        separator = text[pos : pos + 1]
        pos += 1
        if separator == b"}":
            return items, pos
        if not separator or separator[0] != delimiter:
            raise Refused("is not a Postgres array text")


def _depth(column: Column) -> tuple[int, Column]:
    """(dimensions, element column) of an array column."""
    dimensions = 0
    while column.kind is TypeKind.ARRAY and column.element is not None:
        dimensions += 1
        column = storage_column(column.element)
    return dimensions, column


def _array_converter(column: Column) -> Converter:
    dimensions, element = _depth(column)
    check = _check(element)
    delimiter = b";" if element.type_oid == PgType.BOX else b","
    literal: Converter
    if element.kind is TypeKind.BASE and element.type_oid == PgType.BOOL:
        literal = _bool_literal
    elif element.kind is TypeKind.BASE and element.type_oid in _BARE_ELEMENTS:
        literal = check or bytes
    elif check is None:
        literal = quote
    else:
        literal = lambda value: quote(check(value))  # noqa: E731

    def render(items: ArrayItems, level: int) -> bytes:
        parts = []
        for item in items:
            if isinstance(item, list):
                if level == dimensions:
                    raise Refused(f"has more dimensions than the column's {dimensions}")
                parts.append(render(item, level + 1))
            elif level != dimensions:
                raise Refused(f"has fewer dimensions than the column's {dimensions}")
            else:
                parts.append(b"NULL" if item is None else literal(item))
        return b"[" + b",".join(parts) + b"]"

    def convert(value: bytes) -> bytes:
        return render(parse_array(value, delimiter), 1)

    return convert


def _converter(column: Column) -> tuple[Converter | None, bytes]:
    """The converter of a column (None: written as it is) and the field for a missing value."""
    storage = storage_column(column)
    if storage.kind is TypeKind.ARRAY:
        return _array_converter(storage), b"[]"
    check = _check(storage)
    ch_type = clickhouse_type(replace(column, nullable=False))
    convert: Converter | None
    if ch_type not in (STRING, ENUM_TYPE):
        convert = check
    elif check is None:
        convert = escape
    else:
        convert = lambda value: escape(check(value))  # noqa: E731
    if column.nullable:
        return convert, NULL
    return convert, _DEFAULTS.get(ch_type, b"0")  # numbers and Decimals: 0


def _reads_copy_text(column: Column) -> tuple[bool, Converter | None]:
    """Whether ClickHouse reads the column's COPY text field as it is (`cdc.apply.rowtext`), and
    the check its values need first (None: none)."""
    storage = storage_column(column)
    if storage.kind is TypeKind.ARRAY:
        return False, None  # array literals differ
    check = _check(storage)
    return check is not _bytea, check


class RowEncoder:
    """Encodes rows of one table; build once per table shape, reuse for every row."""

    def __init__(self, table: TableSchema) -> None:
        self.table = table
        self.column_names: tuple[str, ...] = table.column_names
        self.insert_columns: tuple[str, ...] = (
            *self.column_names, VERSION_COLUMN, DELETED_COLUMN, COMMIT_TIME_COLUMN
        )  # fmt: skip
        pairs = [_converter(column) for column in table.columns]
        self._converters = tuple(convert for convert, _ in pairs)
        missing: list[bytes | None] = [missing for _, missing in pairs]
        for index in table.key_indexes:
            missing[index] = None  # a NULL key makes the join fail, and `_explain` says why
        self._missing = tuple(missing)
        readable = [_reads_copy_text(column) for column in table.columns]
        # Every column reads the shared row text as it is: lines go to ClickHouse untouched.
        self.reads_row_text = all(ok for ok, _ in readable)
        self._text_checks = tuple((i, check) for i, (_, check) in enumerate(readable) if check)
        # Where a NULL is not `\\N` in ClickHouse: NOT NULL columns get a default (a key is
        # never NULL in a complete row: primary keys are NOT NULL).
        keys = set(table.key_indexes)
        self._not_nullable = tuple(i for i, m in enumerate(missing) if m != NULL and i not in keys)

    def needs_encoding(self, rows: Sequence[Sequence[object]]) -> set[int]:
        """Of rows whose shared text ClickHouse reads (`reads_row_text`), the positions of
        those to encode with `encode_versioned` instead: a value to refuse (its error then
        names it) or a NULL where the column is not Nullable."""
        marked: set[int] = set()
        for index, check in self._text_checks:
            for position, values in enumerate(rows):
                value = values[index]
                if value is not None:
                    try:
                        check(value)  # type: ignore[arg-type]
                    except _VALUE_ERRORS:  # (a non-text value fails here too)
                        marked.add(position)
        not_nullable = self._not_nullable
        if not_nullable:
            for position, values in enumerate(rows):
                if None in values and any(values[i] is None for i in not_nullable):
                    marked.add(position)
        return marked

    def encode(self, values: Sequence[bytes | None]) -> bytes:
        """One TSV line of the source columns, without the trailing newline."""
        if len(values) != len(self._converters):
            raise CdcError(
                ErrorKind.SCHEMA,
                f"row has {len(values)} values, {self.table.qualified_name} has "
                f"{len(self._converters)} columns",
            )
        try:
            fields = [
                missing if value is None else value if convert is None else convert(value)
                for convert, missing, value in zip(  # lengths checked above
                    self._converters, self._missing, values, strict=False
                )
            ]
            return b"\t".join(fields)  # type: ignore[arg-type]
        except _VALUE_ERRORS:
            raise self._explain(values) from None

    def encode_versioned(
        self,
        values: Sequence[bytes | None],
        version: int,
        is_deleted: bool,
        commit_time: bytes = b"\\N",
    ) -> bytes:
        """A full line for `insert_columns`: the values, `_version`, `_is_deleted`,
        `_commit_time` (`cdc.apply.batch.commit_time_text`; default NULL), newline."""
        if not 0 <= version <= MAX_VERSION:
            raise CdcError(ErrorKind.VALUE_OUT_OF_RANGE, f"version {version} is not a UInt128")
        return b"%s\t%d\t%d\t%s\n" % (self.encode(values), version, is_deleted, commit_time)

    def _explain(self, values: Sequence[bytes | None]) -> CdcError:
        """The error for the first value that cannot be encoded."""
        for column, convert, missing, value in zip(
            self.table.columns, self._converters, self._missing, values, strict=True
        ):
            if value is None:
                if missing is None:
                    return CdcError(
                        ErrorKind.VALUE_OUT_OF_RANGE, f"key column {column.name!r} is NULL"
                    )
                continue
            if not isinstance(value, bytes):
                return CdcError(
                    ErrorKind.VALUE_OUT_OF_RANGE,
                    f"column {column.name!r}: {value!r} is not a text value",
                )
            shown = repr(value[:_SHOWN_VALUE_CHARS].decode(errors="replace")) + (
                "..." if len(value) > _SHOWN_VALUE_CHARS else ""
            )
            try:
                if convert is not None:
                    convert(value)
            except _VALUE_ERRORS as exc:
                reason = str(exc) if isinstance(exc, Refused) else f"is not valid ({exc!r})"
                return CdcError(
                    ErrorKind.VALUE_OUT_OF_RANGE,
                    f"column {column.name!r} ({column.pg_type}): value {shown} {reason}",
                )
        return CdcError(ErrorKind.VALUE_OUT_OF_RANGE, "a value could not be encoded")
