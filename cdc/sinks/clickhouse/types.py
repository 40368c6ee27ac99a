"""Which ClickHouse type stores each Postgres column: a pure table, no database needed.

Choices, and why:
- integers map to the same width (`oid` to UInt32); float4/float8 to Float32/Float64,
  which keep NaN and +/-Infinity; bool to Bool; uuid to UUID.
- `numeric(p,s)` maps to `Decimal(p,s)` (a negative scale or one above the precision is
  folded into a Decimal that holds the same values); more than 76 digits is an
  UNSUPPORTED_TYPE error. Unbounded `numeric` maps to `Decimal(76, 38)` so sums and
  comparisons stay numeric in ClickHouse; `cdc.sinks.clickhouse.limits` refuses a value with
  more than 38
  integer or 38 (significant) fractional digits instead of letting ClickHouse truncate it.
- `date` maps to Date32 (Date silently clamps outside 1970..2149); +/-infinity, which
  neither Date32 nor DateTime64 has, is written as the end of their range
  (`cdc.sinks.clickhouse.limits`). `timestamp` and
  `timestamptz` both map to `DateTime64(6, 'UTC')`: Postgres sends both in UTC here, and a
  naive DateTime64 would be read in the server's time zone, where a wall-clock time in a
  DST gap or overlap is shifted silently.
- `time` maps to String: Time64 exists only in recent releases (behind a setting in 25.x), and
  the text `HH:MM:SS[.ffffff]` sorts correctly. `timetz` and `interval` are String too.
- enums map to `LowCardinality(String)`: the label set is small.
- json/jsonb, text-like types, bytea (the raw bytes), network types and every other type
  (composite, range, geometric, xml, money, bit, ...) map to String holding the Postgres
  text form.
- arrays map to `Array(Nullable(element))` (elements may be NULL), one level per declared
  dimension. ClickHouse cannot wrap an Array in Nullable, so a NULL array is stored as
  an empty array.
- domains map as their base type. Nullable columns become `Nullable(T)`; key columns are
  never nullable (`TableSchema` guarantees it).
"""

from __future__ import annotations

import enum
from typing import Final

from cdc.errors import CdcError, ErrorKind
from cdc.schema import Column, TypeKind

MAX_DECIMAL_PRECISION: Final = 76
UNBOUNDED_NUMERIC: Final = (76, 38)
_NUMERIC_TYPMOD_OFFSET: Final = 4  # VARHDRSZ, added by Postgres to every typmod
_NUMERIC_SCALE_BITS: Final = 11  # numeric typmods keep a signed 11-bit scale


class PgType(enum.IntEnum):
    """OIDs of the built-in types that do not map to plain String (and `box`)."""

    BOOL = 16
    BYTEA = 17
    INT8 = 20
    INT2 = 21
    INT4 = 23
    OID = 26
    BOX = 603
    FLOAT4 = 700
    FLOAT8 = 701
    DATE = 1082
    TIMESTAMP = 1114
    TIMESTAMPTZ = 1184
    NUMERIC = 1700
    UUID = 2950


FIXED_TYPES: Final[dict[int, str]] = {
    PgType.BOOL: "Bool",
    PgType.INT2: "Int16",
    PgType.INT4: "Int32",
    PgType.INT8: "Int64",
    PgType.OID: "UInt32",
    PgType.FLOAT4: "Float32",
    PgType.FLOAT8: "Float64",
    PgType.DATE: "Date32",
    PgType.TIMESTAMP: "DateTime64(6, 'UTC')",
    PgType.TIMESTAMPTZ: "DateTime64(6, 'UTC')",
    PgType.UUID: "UUID",
}
STRING: Final = "String"
ENUM_TYPE: Final = "LowCardinality(String)"


def storage_column(column: Column) -> Column:
    """The column with domains resolved to their base type (name and nullability kept)."""
    while column.kind is TypeKind.DOMAIN:
        if column.base_type is None:
            raise ValueError(f"domain column {column.name!r} has no base type")
        column = column.base_type
    return column


def decimal_digits(type_modifier: int) -> tuple[int, int]:
    """(precision, scale) of the ClickHouse Decimal for a numeric typmod (-1: unbounded)."""
    if type_modifier < 0:
        return UNBOUNDED_NUMERIC
    packed = type_modifier - _NUMERIC_TYPMOD_OFFSET
    precision = (packed >> 16) & 0xFFFF
    scale = packed & ((1 << _NUMERIC_SCALE_BITS) - 1)
    if scale >= 1 << (_NUMERIC_SCALE_BITS - 1):
        scale -= 1 << _NUMERIC_SCALE_BITS
    integer_digits = max(precision - scale, 0)
    fraction_digits = max(scale, 0)
    return integer_digits + fraction_digits, fraction_digits


def _base_type(column: Column) -> str:
    """The ClickHouse type without the Nullable wrapper of the column itself."""
    column = storage_column(column)
    if column.kind is TypeKind.ARRAY:
        if column.element is None:
            raise ValueError(f"array column {column.name!r} has no element type")
        return f"Array({_nullable(column.element)})"
    if column.kind is TypeKind.ENUM:
        return ENUM_TYPE
    if column.kind is TypeKind.BASE and column.type_oid == PgType.NUMERIC:
        precision, scale = decimal_digits(column.type_modifier)
        if precision > MAX_DECIMAL_PRECISION:
            raise CdcError(
                ErrorKind.UNSUPPORTED_TYPE,
                f"column {column.name!r}: {column.pg_type} needs {precision} digits, "
                f"ClickHouse Decimal holds at most {MAX_DECIMAL_PRECISION}",
            )
        return f"Decimal({precision}, {scale})"
    if column.kind is TypeKind.BASE:
        return FIXED_TYPES.get(column.type_oid, STRING)
    return STRING


def _nullable(column: Column) -> str:
    base = _base_type(column)
    if base.startswith("Array("):
        return base
    if base == ENUM_TYPE:
        return "LowCardinality(Nullable(String))"
    return f"Nullable({base})"


def clickhouse_type(column: Column) -> str:
    """The ClickHouse type of `column`, Nullable when the column is (arrays never are)."""
    return _nullable(column) if column.nullable else _base_type(column)
