"""Postgres text values -> ClickHouse TabSeparated fields, checks and escaping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.apply.batch import RowImage
from cdc.errors import CdcError, ErrorKind
from cdc.load.copytext import escape
from cdc.schema import Column, TableSchema, TypeKind
from cdc.sinks.clickhouse import values as chvalues
from cdc.sinks.clickhouse.arrays import parse_array
from cdc.sinks.clickhouse.types import PgType
from cdc.sinks.clickhouse.values import RowEncoder

TSV_UNESCAPES = {
    ord("t"): b"\t",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("0"): b"\x00",
    ord("\\"): b"\\",
    ord("'"): b"'",
}
PG_ARRAY_SPECIALS = set('"\\{},') | set(" \t\n\r\v\f")


def unescape(field: bytes) -> bytes:
    """ClickHouse's reading of an escaped TSV field (or quoted-string body)."""
    out = bytearray()
    pos = 0
    while pos < len(field):
        if field[pos] == ord("\\"):
            out += TSV_UNESCAPES[field[pos + 1]]
            pos += 2
        else:
            out.append(field[pos])
            pos += 1
    return bytes(out)


def parse_literal(text: bytes) -> Any:
    """A ClickHouse array literal -> nested lists; quoted elements as bytes, bare as str."""

    def value(pos: int) -> tuple[Any, int]:
        if text[pos : pos + 1] == b"[":
            items: list[Any] = []
            pos += 1
            if text[pos : pos + 1] == b"]":
                return items, pos + 1
            while True:
                item, pos = value(pos)
                items.append(item)
                pos += 1
                if text[pos - 1 : pos] == b"]":
                    return items, pos
        if text[pos : pos + 1] == b"'":
            end = pos + 1
            while text[end : end + 1] != b"'":
                end += 2 if text[end : end + 1] == b"\\" else 1
            return unescape(text[pos + 1 : end]), end + 1
        end = pos
        while text[end : end + 1] not in (b",", b"]"):
            end += 1
        token = text[pos:end].decode()
        return (None if token == "NULL" else token), end

    result, end = value(0)
    assert end == len(text)
    return result


def pg_array_text(items: list[Any]) -> bytes:
    """Postgres' array_out rendering of nested lists of str/None."""
    parts = []
    for item in items:
        if isinstance(item, list):
            parts.append(pg_array_text(item).decode())
        elif item is None:
            parts.append("NULL")
        elif item == "" or item.upper() == "NULL" or PG_ARRAY_SPECIALS & set(item):
            parts.append('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            parts.append(item)
    return ("{" + ",".join(parts) + "}").encode()


def as_bytes(items: list[Any]) -> list[Any]:
    return [
        as_bytes(i) if isinstance(i, list) else None if i is None else i.encode() for i in items
    ]


def base(name: str, oid: int, pg_type: str, typmod: int = -1, nullable: bool = True) -> Column:
    return Column(name, oid, typmod, pg_type, nullable, TypeKind.BASE)


def array(name: str, element: Column, dimensions: int = 1, nullable: bool = True) -> Column:
    for _ in range(dimensions - 1):
        element = Column(name, 0, -1, "x[]", True, TypeKind.ARRAY, element=element)
    return Column(name, 0, -1, f"{element.pg_type}[]", nullable, TypeKind.ARRAY, element=element)


ID = base("id", PgType.INT8, "bigint", nullable=False)
TEXT = base("t", 25, "text")
INT4 = base("i", PgType.INT4, "integer")
NUMERIC_10_2 = base("amount", PgType.NUMERIC, "numeric(10,2)", ((10 << 16) | 2) + 4)


def encoder(*columns: Column) -> RowEncoder:
    return RowEncoder(TableSchema("s", "t", (ID, *columns), ("id",), "d"))


def field(column: Column, value: bytes | None) -> bytes:
    """The encoded field of one value."""
    return encoder(column).encode([b"1", value]).split(b"\t", 1)[1]


def refused(column: Column, value: bytes) -> CdcError:
    with pytest.raises(CdcError) as info:
        encoder(column).encode([b"1", value])
    assert info.value.kind is ErrorKind.VALUE_OUT_OF_RANGE
    assert repr(column.name) in str(info.value)
    return info.value


TEXTS = st.text(alphabet=st.sampled_from("ab \t\n\r\\'\"{},NUL\u00e9\u4e2d\U0001f600\x01"))


@given(st.lists(TEXTS, min_size=1, max_size=4))
def test_free_text_round_trips_through_tsv_escaping(values: list[str]) -> None:
    columns = [base(f"t{i}", 25, "text") for i in range(len(values))]
    line = encoder(*columns).encode([b"1", *(v.encode() for v in values)])
    assert b"\n" not in line and b"\r" not in line
    assert [unescape(f) for f in line.split(b"\t")[1:]] == [v.encode() for v in values]


@given(st.binary(max_size=40))
def test_bytea_becomes_the_raw_bytes(raw: bytes) -> None:
    encoded = field(base("b", PgType.BYTEA, "bytea"), b"\\x" + raw.hex().encode())
    assert b"\t" not in encoded and b"\n" not in encoded
    assert unescape(encoded) == raw


ARRAY_ELEMENTS = st.one_of(st.none(), TEXTS)


@given(st.lists(ARRAY_ELEMENTS, max_size=6))
def test_text_arrays_round_trip(items: list[str | None]) -> None:
    text = pg_array_text(items)
    assert parse_array(text) == as_bytes(items)
    literal = field(array("a", TEXT), text)
    assert b"\t" not in literal and b"\n" not in literal
    assert parse_literal(literal) == as_bytes(items)


@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda width: st.lists(st.lists(ARRAY_ELEMENTS, min_size=width, max_size=width), min_size=1)
    )
)
def test_two_dimensional_text_arrays_round_trip(items: list[list[str | None]]) -> None:
    text = pg_array_text(items)
    assert parse_array(text) == as_bytes(items)
    assert parse_literal(field(array("a", TEXT, dimensions=2), text)) == as_bytes(items)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"{}", b"[]"),
        (b"{1,2,NULL}", b"[1,2,NULL]"),
        (b"[0:2]={1,2,3}", b"[1,2,3]"),
        (b"{-2147483648,2147483647}", b"[-2147483648,2147483647]"),
    ],
)
def test_integer_arrays(text: bytes, expected: bytes) -> None:
    assert field(array("a", INT4), text) == expected


def test_nested_arrays_must_match_the_declared_dimensions() -> None:
    two = array("m", INT4, dimensions=2)
    assert field(two, b"{{1,2},{3,NULL}}") == b"[[1,2],[3,NULL]]"
    assert field(two, b"{}") == b"[]"
    assert field(two, b"[0:1][1:2]={{1,2},{3,4}}") == b"[[1,2],[3,4]]"
    assert "fewer dimensions" in str(refused(two, b"{1,2}"))
    assert "more dimensions" in str(refused(array("a", INT4), b"{{1,2},{3,4}}"))


def test_array_elements_by_type() -> None:
    bools = array("b", base("b", PgType.BOOL, "boolean"))
    assert field(bools, b"{t,f,NULL}") == b"[true,false,NULL]"
    floats = array("f", base("f", PgType.FLOAT8, "double precision"))
    assert (
        field(floats, b"{NaN,Infinity,-Infinity,1.5e-300}") == b"[NaN,Infinity,-Infinity,1.5e-300]"
    )
    moments = array("ts", base("ts", PgType.TIMESTAMPTZ, "timestamptz"))
    assert field(moments, b'{"2024-01-02 03:04:05.5+00",NULL}') == (
        b"['2024-01-02 03:04:05.5+00',NULL]"
    )
    assert "DateTime64 range" in str(refused(moments, b'{"1899-12-31 23:59:59+00"}'))
    blobs = array("by", base("by", PgType.BYTEA, "bytea"))
    assert parse_literal(field(blobs, b'{"\\\\x0027095c",NULL}')) == [b"\x00'\t\\", None]
    amounts = array("n", base("n", PgType.NUMERIC, "numeric"))
    assert field(amounts, b"{1.50,-2,NULL}") == b"[1.50,-2,NULL]"
    assert "Decimal" in str(refused(amounts, b"{1,NaN}"))
    boxes = array("bx", base("bx", 603, "box"))
    assert field(boxes, b"{(3,4),(1,2);NULL}") == b"['(3,4),(1,2)',NULL]"


@pytest.mark.parametrize(
    ("text", "items"),
    [
        (b'{"NULL",NULL,null}', [b"NULL", None, None]),
        (b'{"",a}', [b"", b"a"]),
        (b'{"a\\"b","c\\\\d"}', [b'a"b', b"c\\d"]),
        (b"{{a},{NULL}}", [[b"a"], [None]]),
        (b"[1:1]={x}", [b"x"]),
    ],
)
def test_parse_array(text: bytes, items: list[Any]) -> None:
    assert parse_array(text) == items


def test_malformed_array_text_is_refused() -> None:
    for text in (b"1,2", b"{1,2", b'{"a}', b"{1}x"):
        refused(array("a", INT4), text)


@pytest.mark.parametrize(
    "value",
    [b"1900-01-01", b"2024-02-29", b"2299-12-31"],
)
def test_dates_in_range(value: bytes) -> None:
    assert field(base("d", PgType.DATE, "date"), value) == value


@pytest.mark.parametrize(
    "value",
    [b"1899-12-31", b"2300-01-01", b"2000-01-01 BC", b"10000-01-01"],
)
def test_dates_out_of_range(value: bytes) -> None:
    assert "Date32 range" in str(refused(base("d", PgType.DATE, "date"), value))


@pytest.mark.parametrize(
    ("oid", "value", "held"),
    [
        (PgType.DATE, b"infinity", b"2299-12-31"),
        (PgType.DATE, b"-infinity", b"1900-01-01"),
        (PgType.TIMESTAMP, b"infinity", b"2299-12-31 23:59:59.999999"),
        (PgType.TIMESTAMPTZ, b"-infinity", b"1900-01-01 00:00:00"),
    ],
)
def test_infinities_are_the_ends_of_the_range(oid: int, value: bytes, held: bytes) -> None:
    column = base("v", oid, "infinite")
    assert field(column, value) == held
    row = RowImage(1 << 64, False, (b"1", value))
    assert encoder(column).needs_encoding([row]) == {0}  # not the shared row text as it is


@pytest.mark.parametrize("oid", [PgType.TIMESTAMP, PgType.TIMESTAMPTZ])
@pytest.mark.parametrize(
    "value",
    [
        b"1900-01-01 00:00:00",
        b"1900-01-01 00:00:00+00",
        b"2024-01-02 03:04:05.123456+00",
        b"2299-12-31 23:59:59.999999+00",
        b"2299-12-31 23:59:59.999999",
        b"1900-01-01 05:00:00+05",
    ],
)
def test_timestamps_in_range(oid: int, value: bytes) -> None:
    assert field(base("ts", oid, "timestamp"), value) == value


@pytest.mark.parametrize(
    "value",
    [
        b"1899-12-31 23:59:59.999999+00",
        b"2300-01-01 00:00:00+00",
        b"1900-01-01 00:30:00+01",  # 1899 in UTC
        b"2299-12-31 23:30:00-01",  # 2300 in UTC
        b"1950-01-01 00:00:00+00 BC",
        b"10000-01-01 00:00:00+00",
    ],
)
def test_timestamps_out_of_range(value: bytes) -> None:
    error = refused(base("ts", PgType.TIMESTAMPTZ, "timestamptz"), value)
    assert "DateTime64 range" in str(error)
    assert "ts" in str(error) and value.decode() in str(error)


def test_numerics() -> None:
    unbounded = base("n", PgType.NUMERIC, "numeric")
    digits38 = b"9" * 38
    assert field(unbounded, b"-" + digits38 + b"." + digits38) == b"-" + digits38 + b"." + digits38
    assert field(unbounded, b"1." + b"1" * 38 + b"000") == b"1." + b"1" * 38 + b"000"
    assert field(unbounded, b"0.5") == b"0.5"
    assert "38 integer" in str(refused(unbounded, b"1" + digits38))
    assert "38 integer" in str(refused(unbounded, b"0." + digits38 + b"1"))
    for special in (b"NaN", b"Infinity", b"-Infinity"):
        assert "Decimal" in str(refused(unbounded, special))
    assert field(NUMERIC_10_2, b"-12345678.90") == b"-12345678.90"
    refused(NUMERIC_10_2, b"NaN")


def test_pass_through_values() -> None:
    values = {
        base("i2", PgType.INT2, "smallint"): b"-32768",
        base("i8", PgType.INT8, "bigint"): b"9223372036854775807",
        base("o", PgType.OID, "oid"): b"4294967295",
        base("f4", PgType.FLOAT4, "real"): b"-Infinity",
        base("f8", PgType.FLOAT8, "double precision"): b"NaN",
        base("b", PgType.BOOL, "boolean"): b"t",
        base("u", PgType.UUID, "uuid"): b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    }
    line = encoder(*values).encode([b"7", *values.values()])
    assert line == b"\t".join([b"7", *values.values()])


def test_nulls_tombstones_and_keys() -> None:
    not_null = [
        base("i", PgType.INT4, "integer", nullable=False),
        base("t", 25, "text", nullable=False),
        base("b", PgType.BOOL, "boolean", nullable=False),
        base("u", PgType.UUID, "uuid", nullable=False),
        base("d", PgType.DATE, "date", nullable=False),
        base("ts", PgType.TIMESTAMPTZ, "timestamptz", nullable=False),
        base("n", PgType.NUMERIC, "numeric", nullable=False),
        Column("e", 16400, -1, "mood", False, TypeKind.ENUM),
        array("a", INT4, nullable=False),
    ]
    line = encoder(*not_null).encode([b"1", *[None] * len(not_null)])
    assert line.split(b"\t") == [
        b"1",
        b"0",
        b"",
        b"false",
        b"00000000-0000-0000-0000-000000000000",
        b"1970-01-01",
        b"1970-01-01 00:00:00",
        b"0",
        b"",
        b"[]",
    ]
    nullable = encoder(TEXT, INT4, array("a", INT4)).encode([b"1", None, None, None])
    assert nullable == b"1\t\\N\t\\N\t[]"
    assert field(TEXT, b"\\N") == b"\\\\N"  # the text '\N' is not NULL
    with pytest.raises(CdcError, match="key column 'id' is NULL") as info:
        encoder(TEXT).encode([None, b"x"])
    assert info.value.kind is ErrorKind.VALUE_OUT_OF_RANGE


def test_error_message_truncates_long_values() -> None:
    error = refused(base("d", PgType.DATE, "date"), b"x" * 200)
    assert "x" * 60 + "'..." in str(error) and "x" * 61 not in str(error)
    assert "(date)" in str(error)


def test_wrong_width_and_non_text_values() -> None:
    with pytest.raises(CdcError) as info:
        encoder(TEXT).encode([b"1"])
    assert info.value.kind is ErrorKind.SCHEMA
    with pytest.raises(CdcError, match="is not a text value"):
        encoder(INT4).encode([b"1", 5])  # type: ignore[list-item]


def test_versioned_lines() -> None:
    enc = encoder(TEXT)
    assert enc.insert_columns == ("id", "t", "_version", "_is_deleted", "_commit_time")
    assert enc.column_names == ("id", "t")
    version = (0x16B3748 << 64) | 3
    assert enc.encode_versioned([b"1", b"a"], version, False) == b"1\ta\t%d\t0\t\\N\n" % version
    assert enc.encode_versioned([b"1", None], 2**128 - 1, True).endswith(b"\t1\t\\N\n")
    for bad in (2**128, -1):
        with pytest.raises(CdcError, match="not a UInt128"):
            enc.encode_versioned([b"1", b"a"], bad, False)


def test_escape() -> None:
    assert escape(b"a\\b\tc\nd\re") == b"a\\\\b\\tc\\nd\\re"


# Columns with every screened check, NOT NULL ones among them, and values near each
# check's edges: the C screen must pass only rows the Python checks pass.
SCREENED_COLUMNS = (
    base("d", PgType.DATE, "date"),
    base("ts", PgType.TIMESTAMPTZ, "timestamptz", nullable=False),
    base("n", PgType.NUMERIC, "numeric"),
    NUMERIC_10_2,
    base("i", PgType.INT4, "integer", nullable=False),
    TEXT,
)
EDGES = [
    b"", b"1", b"-", b"NaN", b"Infinity", b"1899-12-31", b"1900-01-01", b"2299-12-31",
    b"2300-01-01", b"1900-01-01 00:00:00+01", b"2299-12-31 23:59:59-01",
    b"1970-01-01 00:00:00+00", b"2024-02-29 12:00:00.5+05:30", b"2024-02-29",
    b"1969-12-31 23:59:59.999999", b"infinity", b"12345-01-01", b"0.5", b"1" * 38, b"1" * 39,
    b"9" * 38 + b"." + b"9" * 38, b"0." + b"1" * 39, b"2024-0", b"20x4-01-01",
]  # fmt: skip
EDGE_VALUES = st.one_of(st.none(), st.sampled_from(EDGES), st.binary(max_size=12))


@given(st.lists(st.lists(EDGE_VALUES, min_size=6, max_size=6), max_size=20))
def test_the_c_screen_judges_rows_as_python_does(rows: list[list[bytes | None]]) -> None:
    assert chvalues._screen is not None, (
        "cdc.sinks.clickhouse._screen is not built: run `make install`"
    )
    row_encoder = encoder(*SCREENED_COLUMNS)
    images = [RowImage(n, False, (b"%d" % n, *values)) for n, values in enumerate(rows)]
    assert row_encoder.needs_encoding(images) == row_encoder.needs_encoding(images, native=False)


def test_rows_to_encode_are_found() -> None:
    row_encoder = encoder(*SCREENED_COLUMNS)
    good = (b"1", b"2024-01-01", b"2024-01-01 00:00:00+00", b"1.5", b"2.50", b"3", b"x")
    rows = [
        good,
        (*good[:1], b"1899-12-31", *good[2:]),  # a date out of range
        (*good[:2], None, *good[3:]),  # NULL in a NOT NULL column
        (*good[:3], b"NaN", *good[4:]),  # not a Decimal
        (*good[:4], None, *good[5:]),  # NULL where allowed
        (*good[:2], b"1900-01-01 00:30:00+01", *good[3:]),  # 1899 in UTC
        (*good[:2], b"2299-12-31 23:00:00+00", *good[3:]),  # in range, checked in Python
    ]
    images = [RowImage(n, False, values) for n, values in enumerate(rows)]
    for native in (True, False):
        assert row_encoder.needs_encoding(images, native=native) == {1, 2, 3, 5}
