"""What ClickHouse can store of a Postgres value: one check per column type, run on each
text value before it is written.

A check returns the value to write or raises `Refused` saying why ClickHouse would store
it wrongly: dates and timestamps outside ClickHouse's documented range
1900-01-01..2299-12-31 (BC and 5-digit years too), numeric NaN/Infinity, or more digits
than the Decimal holds (ClickHouse truncates extra fraction digits silently). The value
written is the value itself, except bytea's (the raw bytes of its hex text) and a date's or
timestamp's `infinity` and `-infinity`, which ClickHouse has no value for: they are written
as the last and the first moment of its range (`INFINITE_DATES`, `INFINITE_TIMESTAMPS`), so
they still sort after and before every other value (`cdc.check.rowhash` hashes them so).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, TypeAlias

from cdc.schema import Column, TypeKind
from cdc.sinks.clickhouse.types import UNBOUNDED_NUMERIC, PgType

_MIN_DATE, _MAX_DATE = b"1900-01-01", b"2299-12-31"
_MIN_YEAR, _MAX_YEAR = b"1900", b"2299"
_MIN_TIMESTAMP: Final = datetime(1900, 1, 1, tzinfo=UTC)
_MAX_TIMESTAMP: Final = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_DIGIT_9: Final = ord("9")
# An unbounded numeric of at most this many characters fits Decimal(76, 38) as it is.
SHORT_UNBOUNDED: Final = min(UNBOUNDED_NUMERIC[0] - UNBOUNDED_NUMERIC[1], UNBOUNDED_NUMERIC[1])

# What a date's or a timestamp's +/-infinity is written as: the ends of ClickHouse's range.
INFINITE_DATES: Final = {b"infinity": _MAX_DATE, b"-infinity": _MIN_DATE}
INFINITE_TIMESTAMPS: Final = {
    b"infinity": b"2299-12-31 23:59:59.999999",
    b"-infinity": b"1900-01-01 00:00:00",
}

Converter: TypeAlias = Callable[[bytes], bytes]


class Refused(ValueError):
    """A value ClickHouse cannot store; the message says why ("is outside ...")."""


def _date(value: bytes) -> bytes:
    if len(value) == len(_MIN_DATE) and _MIN_DATE <= value <= _MAX_DATE:
        return value
    if (bound := INFINITE_DATES.get(value)) is not None:
        return bound
    raise Refused("is outside ClickHouse's Date32 range 1900-01-01..2299-12-31")


def _timestamp(value: bytes) -> bytes:
    year = value[:4]
    if value[4:5] == b"-" and _MIN_YEAR < year < _MAX_YEAR and value[-1] <= _DIGIT_9:
        return value
    if value[4:5] == b"-" and year in (_MIN_YEAR, _MAX_YEAR) and value[-1] <= _DIGIT_9:
        moment = datetime.fromisoformat(value.decode())  # an offset may cross the boundary
        if _MIN_TIMESTAMP <= moment.replace(tzinfo=moment.tzinfo or UTC) <= _MAX_TIMESTAMP:
            return value
    if (bound := INFINITE_TIMESTAMPS.get(value)) is not None:
        return bound
    raise Refused("is outside ClickHouse's DateTime64 range 1900-01-01..2299-12-31 UTC")


def _bounded_decimal(value: bytes) -> bytes:
    if value[-1] <= _DIGIT_9:
        return value
    raise Refused("cannot be stored in a ClickHouse Decimal")


def _unbounded_decimal(value: bytes) -> bytes:
    if len(value) <= SHORT_UNBOUNDED and value[-1] <= _DIGIT_9:
        return value
    _bounded_decimal(value)
    integer_max = UNBOUNDED_NUMERIC[0] - UNBOUNDED_NUMERIC[1]
    integer, _, fraction = value.lstrip(b"-").partition(b".")
    if len(integer.lstrip(b"0")) > integer_max or len(fraction.rstrip(b"0")) > UNBOUNDED_NUMERIC[1]:
        raise Refused(
            f"has more than {integer_max} integer or {UNBOUNDED_NUMERIC[1]} fraction digits, "
            f"the most Decimal{UNBOUNDED_NUMERIC} (for unbounded numeric) holds; give the column "
            "a precision and scale"
        )
    return value


def bytea_bytes(value: bytes) -> bytes:
    """The raw bytes of bytea's hex output text (what ClickHouse's String holds)."""
    if value[:2] != b"\\x":
        raise Refused("is not bytea hex output (bytea_output must be 'hex')")
    return binascii.a2b_hex(value[2:])


_CHECKS: Final[dict[int, Converter]] = {
    PgType.DATE: _date,
    PgType.TIMESTAMP: _timestamp,
    PgType.TIMESTAMPTZ: _timestamp,
    PgType.BYTEA: bytea_bytes,
}

# Each check's first test, screened in C (`cdc.sinks.clickhouse._screen`, which names them
# by these numbers); any other check judges every value in Python.
SCREENED: Final[dict[Converter, int]] = {
    _date: 0,
    _timestamp: 1,
    _bounded_decimal: 2,
    _unbounded_decimal: 3,
}
NOT_SCREENED: Final = 4


def value_check(column: Column) -> Converter | None:
    """The check (or transform, for bytea) of one value of a resolved column; None: none."""
    if column.kind is not TypeKind.BASE:
        return None
    if column.type_oid == PgType.NUMERIC:
        return _bounded_decimal if column.type_modifier >= 0 else _unbounded_decimal
    return _CHECKS.get(column.type_oid)
