"""Which column type changes the targets follow (`cdc.sinks.retype`)."""

from __future__ import annotations

import pytest

from cdc.sinks.clickhouse.types import PgType
from cdc.sinks.retype import TEXT_OID, VARCHAR_OID, clickhouse_widens, widens


def numeric(precision: int, scale: int) -> tuple[int, int]:
    return PgType.NUMERIC, ((precision << 16) | scale) + 4


def varchar(length: int) -> tuple[int, int]:
    return VARCHAR_OID, length + 4


INT2, INT4, INT8 = (PgType.INT2, -1), (PgType.INT4, -1), (PgType.INT8, -1)
TEXT, UNBOUNDED = (TEXT_OID, -1), (PgType.NUMERIC, -1)
TS, TSTZ = PgType.TIMESTAMP, PgType.TIMESTAMPTZ


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (INT2, INT4), (INT4, INT8), (INT2, INT8), (INT4, UNBOUNDED), (INT8, numeric(19, 0)),
        (INT4, numeric(12, 2)), (numeric(12, 3), numeric(16, 4)), (numeric(12, 3), UNBOUNDED),
        (varchar(5), varchar(20)), (varchar(5), TEXT), (TEXT, (VARCHAR_OID, -1)),
        ((TS, 0), (TS, 6)), ((TSTZ, 3), (TSTZ, -1)),
    ],
)  # fmt: skip
def test_widenings_are_followed(old: tuple[int, int], new: tuple[int, int]) -> None:
    assert widens(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (INT8, INT4), (INT8, numeric(12, 0)), (INT4, numeric(12, 4)),
        (numeric(12, 3), numeric(12, 4)), (UNBOUNDED, numeric(30, 10)), (numeric(12, 3), INT8),
        (varchar(20), varchar(5)), (TEXT, varchar(5)), ((PgType.FLOAT4, -1), (PgType.FLOAT8, -1)),
        (INT4, TEXT), (TEXT, INT8), ((TS, -1), (TSTZ, -1)), ((TS, 6), (TS, 3)),
        ((1007, -1), (1016, -1)),  # int4[] -> int8[]
    ],
)  # fmt: skip
def test_other_changes_are_not(old: tuple[int, int], new: tuple[int, int]) -> None:
    assert not widens(old, new)


def test_clickhouse_widens_integers_and_decimals_keeping_nullability() -> None:
    assert clickhouse_widens("Int32", "Int64")
    assert clickhouse_widens("Nullable(Int16)", "Nullable(Decimal(76, 38))")
    assert clickhouse_widens("Nullable(Decimal(12, 3))", "Nullable(Decimal(16, 4))")
    assert not clickhouse_widens("Int64", "Int32")
    assert not clickhouse_widens("Int32", "Nullable(Int64)")  # nullability is another change
    assert not clickhouse_widens("Decimal(12, 3)", "Int64")
    assert not clickhouse_widens("Int64", "Decimal(18, 0)")
    assert not clickhouse_widens("String", "Int64")
    assert not clickhouse_widens("Float32", "Float64")
