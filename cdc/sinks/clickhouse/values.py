"""Encode rows of Postgres text values into ClickHouse TabSeparated lines (the hot path).

`RowEncoder(table)` chooses one converter per column once; `encode(values)` then turns a
row of Postgres text values (`bytes`, `None` for NULL, as the replication stream and a
text-mode COPY/SELECT in a UTC session produce them) into one TSV line **without** the
trailing newline, and `encode_versioned` appends `_version`, `_is_deleted` and the
newline. Insert the lines with `INSERT_SETTINGS` in TabSeparated format into the columns
`insert_columns`.

Values ClickHouse would store wrongly are refused with VALUE_OUT_OF_RANGE naming the
column, the value and the reason (`cdc.sinks.clickhouse.limits`; arrays whose nesting
differs from the column's, `cdc.sinks.clickhouse.arrays`), and so is a NULL key.

NULL is `\\N` in a Nullable column and `[]` in an array column. A tombstone row carries
only its key: a NOT NULL column without a value gets its type's default written
explicitly, because `input_format_tsv_empty_as_default` would turn an empty string in a
Nullable(String) column into NULL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from cdc.apply.batch import RowImage
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
from cdc.sinks.clickhouse.arrays import array_converter
from cdc.sinks.clickhouse.limits import (
    NOT_SCREENED,
    SCREENED,
    SHORT_UNBOUNDED,
    Converter,
    Refused,
    bytea_bytes,
    value_check,
)
from cdc.sinks.clickhouse.types import ENUM_TYPE, STRING, clickhouse_type, storage_column

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
_DEFAULTS: Final[dict[str, bytes]] = {
    STRING: b"",
    ENUM_TYPE: b"",
    "Bool": b"false",
    "UUID": b"00000000-0000-0000-0000-000000000000",
    "Date32": b"1970-01-01",
    "DateTime64(6, 'UTC')": b"1970-01-01 00:00:00",
}
# What a converter may raise for a value it cannot encode.
_VALUE_ERRORS: Final = (ValueError, TypeError, IndexError, KeyError)
_VALUES_AT: Final = RowImage._fields.index("values")

_screen: Callable[..., list[int]] | None
try:
    from cdc.sinks.clickhouse._screen import screen as _screen
except ImportError:  # not built: every row is judged in Python
    _screen = None


def _converter(column: Column) -> tuple[Converter | None, bytes]:
    """The converter of a column (None: written as it is) and the field for a missing value."""
    storage = storage_column(column)
    if storage.kind is TypeKind.ARRAY:
        return array_converter(storage), b"[]"
    check = value_check(storage)
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
    check = value_check(storage)
    return check is not bytea_bytes, check


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
        self._screened = (
            tuple(i for i, _ in self._text_checks),
            tuple(SCREENED.get(check, NOT_SCREENED) for _, check in self._text_checks),
            self._not_nullable,
        )

    def needs_encoding(self, images: list[RowImage], native: bool = True) -> set[int]:
        """Of rows whose shared text ClickHouse reads (`reads_row_text`), the positions of
        those to encode with `encode_versioned` instead: a value to refuse (its error then
        names it), one written otherwise (an infinite date), or a NULL where the column is
        not Nullable. The rows are screened in C (`cdc.sinks.clickhouse._screen`) when it is
        built: only those it does not pass are judged here."""
        candidates: Sequence[int] = range(len(images))
        if native and _screen is not None:
            candidates = _screen(images, _VALUES_AT, *self._screened, SHORT_UNBOUNDED)
        return {p for p in candidates if self._to_encode(images[p].values)}

    def _to_encode(self, values: Sequence[object]) -> bool:
        for index, check in self._text_checks:
            value = values[index]
            if value is not None:
                try:
                    if check(value) is not value:  # type: ignore[arg-type]
                        return True  # written otherwise (an infinite date)
                except _VALUE_ERRORS:  # (a non-text value fails here too)
                    return True
        return None in values and any(values[i] is None for i in self._not_nullable)

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
