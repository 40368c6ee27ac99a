"""Postgres -> ClickHouse type mapping."""

from __future__ import annotations

import pytest

from cdc.errors import CdcError, ErrorKind
from cdc.schema import Column, TypeKind
from cdc.sinks.clickhouse.types import PgType, clickhouse_type, decimal_digits, storage_column


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


def col(
    oid: int,
    pg_type: str,
    typmod: int = -1,
    *,
    nullable: bool = False,
    kind: TypeKind = TypeKind.BASE,
    element: Column | None = None,
    base_type: Column | None = None,
) -> Column:
    return Column("c", oid, typmod, pg_type, nullable, kind, element, base_type)


def array_of(element: Column, *, nullable: bool = True, dimensions: int = 1) -> Column:
    element = Column(
        "c", element.type_oid, element.type_modifier, element.pg_type, True, element.kind,
        element.element, element.base_type,
    )  # fmt: skip
    for _ in range(dimensions - 1):
        element = col(0, "x[]", nullable=True, kind=TypeKind.ARRAY, element=element)
    return col(0, f"{element.pg_type}[]", nullable=nullable, kind=TypeKind.ARRAY, element=element)


TEXT = col(25, "text")
INT4 = col(PgType.INT4, "integer")
MOOD = col(16400, "director.mood", kind=TypeKind.ENUM)


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (col(PgType.INT2, "smallint"), "Int16"),
        (INT4, "Int32"),
        (col(PgType.INT8, "bigint"), "Int64"),
        (col(PgType.OID, "oid"), "UInt32"),
        (col(PgType.NUMERIC, "numeric(10,2)", numeric_typmod(10, 2)), "Decimal(10, 2)"),
        (col(PgType.NUMERIC, "numeric(76,38)", numeric_typmod(76, 38)), "Decimal(76, 38)"),
        (col(PgType.NUMERIC, "numeric(38,38)", numeric_typmod(38, 38)), "Decimal(38, 38)"),
        (col(PgType.NUMERIC, "numeric(3,-2)", numeric_typmod(3, -2)), "Decimal(5, 0)"),
        (col(PgType.NUMERIC, "numeric(2,5)", numeric_typmod(2, 5)), "Decimal(5, 5)"),
        (col(PgType.NUMERIC, "numeric"), "Decimal(76, 38)"),
        (col(PgType.FLOAT4, "real"), "Float32"),
        (col(PgType.FLOAT8, "double precision"), "Float64"),
        (col(PgType.BOOL, "boolean"), "Bool"),
        (TEXT, "String"),
        (col(1043, "character varying(20)"), "String"),
        (col(1042, "character(5)"), "String"),
        (col(19, "name"), "String"),
        (col(18, '"char"'), "String"),
        (col(17001, "public.citext"), "String"),
        (col(PgType.UUID, "uuid"), "UUID"),
        (col(PgType.DATE, "date"), "Date32"),
        (col(PgType.TIMESTAMP, "timestamp without time zone"), "DateTime64(6, 'UTC')"),
        (col(PgType.TIMESTAMPTZ, "timestamp with time zone"), "DateTime64(6, 'UTC')"),
        (col(1083, "time without time zone"), "String"),
        (col(1266, "time with time zone"), "String"),
        (col(1186, "interval"), "String"),
        (col(114, "json"), "String"),
        (col(3802, "jsonb"), "String"),
        (col(PgType.BYTEA, "bytea"), "String"),
        (col(869, "inet"), "String"),
        (col(650, "cidr"), "String"),
        (col(829, "macaddr"), "String"),
        (col(142, "xml"), "String"),
        (col(790, "money"), "String"),
        (col(1562, "bit varying(8)"), "String"),
        (col(600, "point"), "String"),
        (MOOD, "LowCardinality(String)"),
        (col(16500, "director.pair", kind=TypeKind.COMPOSITE), "String"),
        (col(3904, "int4range", kind=TypeKind.RANGE), "String"),
        (col(2276, "any", kind=TypeKind.OTHER), "String"),
    ],
    ids=lambda value: value.pg_type if isinstance(value, Column) else None,
)
def test_not_null_columns(column: Column, expected: str) -> None:
    assert clickhouse_type(column) == expected


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (col(PgType.INT8, "bigint", nullable=True), "Nullable(Int64)"),
        (col(PgType.NUMERIC, "numeric", nullable=True), "Nullable(Decimal(76, 38))"),
        (col(25, "text", nullable=True), "Nullable(String)"),
        (col(PgType.TIMESTAMPTZ, "timestamptz", nullable=True), "Nullable(DateTime64(6, 'UTC'))"),
        (col(16400, "mood", nullable=True, kind=TypeKind.ENUM), "LowCardinality(Nullable(String))"),
    ],
)
def test_nullable_columns(column: Column, expected: str) -> None:
    assert clickhouse_type(column) == expected


@pytest.mark.parametrize("nullable", [True, False])
def test_arrays_are_never_nullable_and_their_elements_always_are(nullable: bool) -> None:
    assert clickhouse_type(array_of(INT4, nullable=nullable)) == "Array(Nullable(Int32))"
    assert clickhouse_type(array_of(TEXT, nullable=nullable)) == "Array(Nullable(String))"


def test_array_element_types() -> None:
    assert clickhouse_type(array_of(MOOD)) == "Array(LowCardinality(Nullable(String)))"
    tstz = col(PgType.TIMESTAMPTZ, "timestamp with time zone")
    assert clickhouse_type(array_of(tstz)) == "Array(Nullable(DateTime64(6, 'UTC')))"
    amount = col(PgType.NUMERIC, "numeric(10,2)", numeric_typmod(10, 2))
    assert clickhouse_type(array_of(amount)) == "Array(Nullable(Decimal(10, 2)))"


def test_declared_dimensions_nest_arrays() -> None:
    assert clickhouse_type(array_of(INT4, dimensions=2)) == "Array(Array(Nullable(Int32)))"
    assert clickhouse_type(array_of(TEXT, dimensions=3)) == (
        "Array(Array(Array(Nullable(String))))"
    )


def test_domains_map_as_their_base_type() -> None:
    base = col(PgType.NUMERIC, "numeric(10,2)", numeric_typmod(10, 2))
    domain = col(17000, "director.amount", kind=TypeKind.DOMAIN, base_type=base)
    assert clickhouse_type(domain) == "Decimal(10, 2)"
    nullable = col(17000, "director.amount", nullable=True, kind=TypeKind.DOMAIN, base_type=base)
    assert clickhouse_type(nullable) == "Nullable(Decimal(10, 2))"
    nested = col(17001, "director.small_amount", kind=TypeKind.DOMAIN, base_type=domain)
    assert storage_column(nested) is base
    over_array = col(17002, "director.tags", kind=TypeKind.DOMAIN, base_type=array_of(TEXT))
    assert clickhouse_type(over_array) == "Array(Nullable(String))"
    array_of_domain = array_of(domain)
    assert clickhouse_type(array_of_domain) == "Array(Nullable(Decimal(10, 2)))"


def test_numeric_wider_than_clickhouse_decimal_is_unsupported() -> None:
    with pytest.raises(CdcError, match=r"numeric\(77,0\) needs 77 digits") as info:
        clickhouse_type(col(PgType.NUMERIC, "numeric(77,0)", numeric_typmod(77, 0)))
    assert info.value.kind is ErrorKind.UNSUPPORTED_TYPE
    with pytest.raises(CdcError):  # 70 integer + 10 fraction digits
        clickhouse_type(col(PgType.NUMERIC, "numeric(70,-10)", numeric_typmod(70, -10)))


@pytest.mark.parametrize(
    ("precision", "scale", "expected"),
    [(10, 2, (10, 2)), (1, 0, (1, 0)), (1000, 0, (1000, 0)), (3, -2, (5, 0)), (2, 5, (5, 5))],
)
def test_decimal_digits(precision: int, scale: int, expected: tuple[int, int]) -> None:
    assert decimal_digits(numeric_typmod(precision, scale)) == expected
    assert decimal_digits(-1) == (76, 38)
