"""COPY text rows as Postgres' binary COPY, converted in C (`cdc.load._copybinary`).

The historic writes COPY in binary when they can: the server then runs each column's
receive function instead of its text input function, which on the benchmark's table
halves the cost of a COPY into the stage (1.48 against 2.67 µs a row,
`bench/historic_levers.py`). The rows stay COPY text everywhere else (the stream's values
are the text Postgres printed, and ClickHouse reads the same lines), and are converted
just before they are written.

A plan has one code per column, from the target table's column types: built-in types
only, whose binary form the converter makes from their text (numbers, dates and times,
uuids, text and json, bytea in hex). A table with a column of another type (arrays,
enums, domains, intervals, ...) has no plan and its rows go as text; so does a batch with
a value of a form the converter leaves to the server (a BC date, an escape COPY TO does
not write), which then reads it, or names what it cannot read, as before.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from cdc.load.chunks import JSONB_OID, TEXT_FORM_OIDS
from cdc.sinks.clickhouse.types import PgType

try:
    from cdc.load import _copybinary
except ImportError:  # pragma: no cover - not built: rows are COPYed as text
    _copybinary = None  # type: ignore[assignment]

AVAILABLE = _copybinary is not None


class Code(enum.IntEnum):
    """Conversions, numbered as in `_copybinary.c`."""

    TEXT = 1
    BOOL = 2
    INT2 = 3
    INT4 = 4
    INT8 = 5
    OID = 6
    FLOAT4 = 7
    FLOAT8 = 8
    NUMERIC = 9
    DATE = 10
    TIMESTAMP = 11
    TIMESTAMPTZ = 12
    UUID = 13
    JSONB = 14
    BYTEA = 15


_CODES: dict[int, Code] = {
    **dict.fromkeys(TEXT_FORM_OIDS, Code.TEXT), JSONB_OID: Code.JSONB, PgType.BOOL: Code.BOOL,
    PgType.INT2: Code.INT2, PgType.INT4: Code.INT4, PgType.INT8: Code.INT8,
    PgType.OID: Code.OID, PgType.FLOAT4: Code.FLOAT4, PgType.FLOAT8: Code.FLOAT8,
    PgType.NUMERIC: Code.NUMERIC, PgType.DATE: Code.DATE, PgType.TIMESTAMP: Code.TIMESTAMP,
    PgType.TIMESTAMPTZ: Code.TIMESTAMPTZ, PgType.UUID: Code.UUID, PgType.BYTEA: Code.BYTEA,
}  # fmt: skip


def plan(type_oids: Sequence[int]) -> bytes | None:
    """The conversion of each column of these types, in order; None if a type has none,
    or the converter is not built."""
    if not AVAILABLE or not type_oids:
        return None
    codes = [_CODES.get(oid) for oid in type_oids]
    if None in codes:
        return None
    return bytes(codes)  # type: ignore[arg-type]


def to_binary(data: bytes, plan: bytes) -> bytes | None:
    """COPY text rows of the plan's columns as a binary COPY (signature and trailer
    included); None if a value has a form left to the server. ValueError if a row does not
    have one field per column."""
    result: bytes | None = _copybinary.to_binary(data, plan)
    return result
