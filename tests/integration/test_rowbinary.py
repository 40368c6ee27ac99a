"""Postgres binary COPY converted to ClickHouse RowBinary
(`cdc.sinks.clickhouse.rowbinary`): the same
values in ClickHouse as the COPY text path gives, for every type it converts; values
ClickHouse cannot hold refused with their column; plans only for the types the table has."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc.describe import describe_table
from cdc.load.backfill import Backfill
from cdc.load.chunks import Chunk, direct_copy_sql
from cdc.load.copyout import copy_out
from cdc.schema import TableSchema
from cdc.sinks.clickhouse import ddl as ch_ddl
from cdc.sinks.clickhouse import rowbinary
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.types import clickhouse_type
from cdc.stream.snapshot import exported_snapshot
from tests.harness import ClickHouseServer
from tests.pipeline import prepared_sinks

pytestmark = pytest.mark.integration
VERSION = (0x1_6B3D_8E20 << 64) + 7
NINES = "9" * 38

COLUMNS = """
    id int PRIMARY KEY, c_int2 smallint, c_int4 int, c_int8 bigint, c_oid oid,
    c_float4 real, c_float8 float8, c_bool bool, c_uuid uuid, c_date date,
    c_ts timestamp, c_tstz timestamptz, c_text text, c_varchar varchar(10), c_char char(5),
    c_name name, c_json json, c_jsonb jsonb, c_num9 numeric(9,2), c_num18 numeric(18,4),
    c_num38 numeric(38,10), c_num76 numeric(76,38), c_num_neg numeric(5,-2),
    c_num_frac numeric(3,5), c_enum mood, c_domain positive, c_required text NOT NULL
"""
EDGE_ROWS = f"""
INSERT INTO t VALUES
 (1, 12, 123, 1, 12345, 1.5, 0.1, true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
  '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+02', 'plain', 'short', 'ab',
  'a_name', '{{"b": [1, 2]}}', '{{"b": [1, 2], "a": null}}', 12345.67, 1.5, 0.0000000001,
  1.5, 12300, 0.00123, 'happy', 1, 'x'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ''),
 (3, -32768, -2147483648, -9223372036854775808, 0, '-Infinity', 'NaN', false,
  '00000000-0000-0000-0000-000000000000', '1900-01-01', '1900-01-01 00:00:00',
  '1900-01-01 00:00:00+00', E'tab\\there\\nnew \\\\N back\\\\slash ünï 中文 😀', '',
  '', '', '[]', '{{}}', -9999999.99, -99999999999999.9999, -{"9" * 28}.{"9" * 10},
  -{NINES}.{NINES}, -99900, -0.00999, 'sad', 2147483647, E'\\t'),
 (4, 32767, 2147483647, 9223372036854775807, 4294967295, 'Infinity', '-0', true,
  'ffffffff-ffff-ffff-ffff-ffffffffffff', '2299-12-31', '2299-12-31 23:59:59.999999',
  '2299-12-31 23:59:59.999999+00', repeat('long ', 200), 'ten chars!', 'abcde',
  repeat('n', 63), '"a string"', '[1, "two", {{"3": 3.5}}]', 0, 0, 0, 0, 0, 0, 'ok', 7,
  repeat('y', 300)),
 (5, 1, 1, 1, 1, 1e-30, 1.7976931348623157e308, false, gen_random_uuid(), '1970-01-01',
  '1969-12-31 23:59:59.999999', '1970-01-01 00:00:00.000001+00', 'x', 'x', 'x', 'x',
  'null', 'null', 0.01, 0.0001, 10000000000, 0.{"0" * 37}1, 100, 0.00001, 'happy', 1,
  'z')
"""


def make_table(pg: psycopg.Connection[Any]) -> TableSchema:
    pg.execute("CREATE TYPE mood AS ENUM ('happy', 'sad', 'ok')")
    pg.execute("CREATE DOMAIN positive AS int CHECK (VALUE > 0)")
    pg.execute(f"CREATE TABLE t ({COLUMNS})")
    return describe_table(pg, "public", "t")


def binary_copy(pg: psycopg.Connection[Any], where: str = "true") -> bytes:
    return copy_out(
        pg,
        sql.SQL("COPY (SELECT * FROM t WHERE {}) TO STDOUT (FORMAT binary)").format(sql.SQL(where)),
    )[0]


def target(ch: Any, database: str, table: TableSchema, name: str) -> str:
    qualified = f"{quote_identifier(database)}.{quote_identifier(name)}"
    ch.command(ch_ddl.clickhouse_table(database, table).replace(
        f"{quote_identifier(database)}.{quote_identifier(table.name)}", qualified, 1
    ))  # fmt: skip
    return qualified


def as_text(ch: Any, qualified: str) -> bytes:
    return bytes(ch.raw_query(f"SELECT * FROM {qualified} FINAL ORDER BY id FORMAT TabSeparated"))


def both_ways(pg: psycopg.Connection[Any], ch: Any, database: str, table: TableSchema) -> None:
    """Insert the table's rows as RowBinary and as COPY text; assert ClickHouse holds the
    same in both, row for row."""
    names = [*table.column_names, "_version"]
    plan = rowbinary.plan(table, {c.name: clickhouse_type(c) for c in table.columns})
    assert plan is not None
    data, rows = rowbinary.convert(binary_copy(pg), plan, VERSION)
    count = pg.execute("SELECT count(*) FROM t").fetchone()
    assert count is not None and rows == count[0]
    converted = target(ch, database, table, "converted")
    ch.raw_insert(converted, column_names=names, insert_block=data, fmt="RowBinary")
    text = target(ch, database, table, "text")
    copied, _ = copy_out(pg, direct_copy_sql(table, Chunk("t", 0, None, None), None, VERSION))
    ch.raw_insert(text, column_names=names, insert_block=copied, fmt="TabSeparated")
    expected = as_text(ch, text)
    assert expected.count(b"\n") == rows
    assert as_text(ch, converted) == expected


@pytest.fixture
def session(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    assert rowbinary.AVAILABLE, "cdc.sinks.clickhouse._rowbinary is not built: run `make install`"
    pg.execute("SET TimeZone = 'UTC'")
    return pg


def test_every_type_holds_the_same_values_as_the_text_path(
    session: psycopg.Connection[Any], ch: Any, ch_database: str
) -> None:
    table = make_table(session)
    session.execute(EDGE_ROWS)
    both_ways(session, ch, ch_database, table)
    row = ch.query(
        f"SELECT c_num76, c_uuid, c_tstz, c_date, _version FROM "
        f"{quote_identifier(ch_database)}.converted WHERE id = 3"
    ).result_rows[0]
    assert str(row[0]) == f"-{NINES}.{NINES}"
    assert str(row[1]) == "00000000-0000-0000-0000-000000000000"
    assert row[2].year == 1900 and str(row[3]) == "1900-01-01"
    assert row[4] == VERSION


def test_random_rows_hold_the_same_values_as_the_text_path(
    session: psycopg.Connection[Any], ch: Any, ch_database: str
) -> None:
    table = make_table(session)
    session.execute(
        "INSERT INTO t SELECT g, (random() * 60000 - 30000)::int, (random() * 4e9 - 2e9)::int, "
        "(random() * 9e18 - 4.5e18)::bigint, (random() * 4e9)::bigint, random() * 1e6 - 5e5, "
        "random() * 1e12 - 5e11, random() < 0.5, gen_random_uuid(), "
        "'1900-01-01'::date + (random() * 146000)::int, "
        "'1900-01-01'::timestamp + random() * interval '145000 days', "
        "'1900-01-01'::timestamptz + random() * interval '145000 days', md5(g::text), "
        "left(md5(g::text), 10), left(md5(g::text), 3), md5(g::text), "
        "json_build_object('g', g), jsonb_build_object('g', g, 'r', random()), "
        "random() * 1e7 - 5e6, random() * 1e14 - 5e13, random() * 1e28 - 5e27, "
        "(random() - 0.5) * 1e38, (random() * 1e5 - 5e4)::int, random() / 101, "
        "(ARRAY['happy', 'sad', 'ok'])[1 + g % 3]::mood, 1 + g % 1000, md5(g::text) "
        "FROM generate_series(1, 5000) g"
    )
    session.execute("UPDATE t SET c_text = NULL, c_num38 = NULL, c_uuid = NULL WHERE id % 7 = 0")
    both_ways(session, ch, ch_database, table)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.decimals(min_value=-(10**28) + 1, max_value=10**28 - 1, places=10, allow_nan=False),
        min_size=1, max_size=40,
    )
)  # fmt: skip
def test_numerics_convert_exactly(
    session: psycopg.Connection[Any], ch: Any, ch_database: str, values: list[Any]
) -> None:
    session.execute("DROP TABLE IF EXISTS n")
    session.execute("CREATE TABLE n (id int PRIMARY KEY, a numeric(38,10), b numeric(76,20), "
                    "c numeric(18,10), d numeric(9,0))")  # fmt: skip
    with session.cursor() as cur:
        cur.executemany(
            "INSERT INTO n VALUES (%s, %s, %s, %s %% 1e8, round(%s %% 1e8, 0) + 0.0)",
            [(i, v, v, v, v) for i, v in enumerate(values)],
        )
    table = describe_table(session, "public", "n")
    plan = rowbinary.plan(table, {c.name: clickhouse_type(c) for c in table.columns})
    assert plan is not None
    data = copy_out(session, sql.SQL("COPY n TO STDOUT (FORMAT binary)"))[0]
    converted, rows = rowbinary.convert(data, plan, VERSION)
    assert rows == len(values)
    ch.command(f"DROP TABLE IF EXISTS {quote_identifier(ch_database)}.n")
    ch.command(ch_ddl.clickhouse_table(ch_database, table))
    qualified = f"{quote_identifier(ch_database)}.n"
    ch.raw_insert(qualified, column_names=[*table.column_names, "_version"],
                  insert_block=converted, fmt="RowBinary")  # fmt: skip
    expected = session.execute(
        "SELECT id, a::text, b::text, c::text, d::text FROM n ORDER BY id"
    ).fetchall()
    got = ch.query(
        f"SELECT id, toString(a), toString(b), toString(c), toString(d) FROM {qualified} "
        "ORDER BY id"
    ).result_rows
    assert [tuple(map(_canonical, r)) for r in got] == [tuple(map(_canonical, r)) for r in expected]


def _canonical(value: Any) -> Any:
    """A decimal's text without trailing fractional zeros (ClickHouse trims them)."""
    if not isinstance(value, str) or "." not in value:
        return value
    trimmed = value.rstrip("0").rstrip(".")
    return "0" if trimmed in ("", "-0") else trimmed


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("c_date", "'1899-12-31'", "date outside"),
        ("c_date", "'2300-01-01'", "date outside"),
        ("c_date", "'infinity'", "date outside"),
        ("c_ts", "'1899-12-31 23:59:59.999999'", "timestamp outside"),
        ("c_tstz", "'2300-01-01 00:00:00+00'", "timestamp outside"),
        ("c_tstz", "'-infinity'", "timestamp outside"),
        ("c_num9", "'NaN'", "NaN"),
    ],
)
def test_a_value_clickhouse_cannot_hold_is_refused_with_its_column(
    session: psycopg.Connection[Any], column: str, value: str, reason: str
) -> None:
    table = make_table(session)
    session.execute(EDGE_ROWS)
    session.execute(f"UPDATE t SET {column} = {value} WHERE id = 4")
    plan = rowbinary.plan(table, {c.name: clickhouse_type(c) for c in table.columns})
    assert plan is not None
    with pytest.raises(rowbinary.Refused) as info:
        rowbinary.convert(binary_copy(session), plan, VERSION)
    assert table.column_names[info.value.column] == column
    assert reason in info.value.reason
    rowbinary.convert(binary_copy(session, "id <> 4"), plan, VERSION)  # the others convert


def test_a_null_for_a_column_clickhouse_does_not_make_nullable_is_refused(
    session: psycopg.Connection[Any],
) -> None:
    table = make_table(session)
    session.execute(EDGE_ROWS)
    types = {c.name: clickhouse_type(c) for c in table.columns}
    types["c_text"] = "String"
    plan = rowbinary.plan(table, types)
    assert plan is not None
    with pytest.raises(rowbinary.Refused) as info:
        rowbinary.convert(binary_copy(session), plan, VERSION)
    assert table.column_names[info.value.column] == "c_text"
    assert rowbinary.convert(binary_copy(session, "c_text IS NOT NULL"), plan, VERSION)[1] == 4


def test_data_that_is_not_a_binary_copy_of_the_plan_is_an_error(
    session: psycopg.Connection[Any],
) -> None:
    table = make_table(session)
    session.execute(EDGE_ROWS)
    plan = rowbinary.plan(table, {c.name: clickhouse_type(c) for c in table.columns})
    assert plan is not None
    data = binary_copy(session)
    cuts = [len(data) - 1, len(data) // 2, 30, *random.Random(5).sample(range(20, len(data)), 20)]
    for cut in cuts:
        with pytest.raises(ValueError, match="binary COPY data") as info:
            rowbinary.convert(data[:cut], plan, VERSION)
        assert not isinstance(info.value, rowbinary.Refused)
    text = copy_out(session, sql.SQL("COPY t TO STDOUT"))[0]
    with pytest.raises(ValueError, match="signature"):
        rowbinary.convert(text, plan, VERSION)
    with pytest.raises(ValueError, match="column count"):
        rowbinary.convert(data, plan[:-3], VERSION)


def test_a_plan_needs_every_column_in_the_type_its_postgres_type_maps_to(
    session: psycopg.Connection[Any], ch: Any, ch_database: str
) -> None:
    table = make_table(session)
    ch.command(ch_ddl.clickhouse_table(ch_database, table))
    actual = dict(ch.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 't'",
        parameters={"db": ch_database},
    ).result_rows)  # fmt: skip
    assert rowbinary.plan(table, actual) is not None  # as ClickHouse spells the types
    made_nullable = {**actual, "c_int4": "Nullable(Int32)", "c_required": "Nullable(String)"}
    assert rowbinary.plan(table, made_nullable) is not None
    for column, other in [("c_int4", "Nullable(Int64)"), ("c_num9", "Nullable(Decimal(10, 2))"),
                          ("c_tstz", "Nullable(DateTime64(3, 'UTC'))")]:  # fmt: skip
        assert rowbinary.plan(table, {**actual, column: other}) is None, column
    assert rowbinary.plan(table, {k: v for k, v in actual.items() if k != "c_bool"}) is None
    session.execute("CREATE TABLE w (id int PRIMARY KEY, tags text[], n numeric, at time)")
    wide = describe_table(session, "public", "w")
    for name in ("tags", "n", "at"):
        only = replace(wide, columns=tuple(c for c in wide.columns if c.name in ("id", name)))
        assert rowbinary.plan(only, {c.name: clickhouse_type(c) for c in only.columns}) is None


@pytest.mark.parametrize("amount_type", ["Nullable(Decimal(10, 2))", "Nullable(Decimal(20, 2))"])
def test_a_backfill_sends_rowbinary_unless_a_column_has_another_type(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    monkeypatch: pytest.MonkeyPatch,
    amount_type: str,
) -> None:
    """Decimal(10, 2) is what numeric(10,2) maps to; Decimal(20, 2), set by hand, is not:
    that table's rows go as COPY text, and ClickHouse holds the same either way."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, note text, at timestamptz, "
               "amount numeric(10,2))")  # fmt: skip
    pg.execute("INSERT INTO director.t SELECT g, CASE WHEN g % 9 > 0 THEN 'n' || g END, "
               "'2026-01-01'::timestamptz + g * interval '1 hour', g * 1.25 - 500 "
               "FROM generate_series(1, 1000) g")  # fmt: skip
    client = clickhouse_server.client
    table, sinks = prepared_sinks(pg, pg_dsn, clickhouse_server.url, client, ch_database, "t")
    qualified = f"{quote_identifier(ch_database)}.t"
    client.command(f"ALTER TABLE {qualified} MODIFY COLUMN amount {amount_type}")
    conversions: list[int] = []
    convert = rowbinary.convert

    def counted(data: bytes, plan: bytes, version: int) -> tuple[bytes, int]:
        converted = convert(data, plan, version)
        conversions.append(converted[1])
        return converted

    monkeypatch.setattr(rowbinary, "convert", counted)
    with exported_snapshot(pg_dsn) as snapshot:
        Backfill(pg_dsn, pg_dsn, "historic", "job", [table], sinks, chunk_size=300).run(snapshot)
    binary = amount_type == clickhouse_type(table.column("amount"))
    # chunks may be copied in any order by the backfill's workers
    assert sorted(conversions) == ([100, 300, 300, 300] if binary else [])
    got = client.query(
        f"SELECT id, note, toUnixTimestamp64Micro(at), toString(amount), _version "
        f"FROM {qualified} FINAL ORDER BY id"
    ).result_rows
    expected = pg.execute(
        "SELECT id, note, (extract(epoch FROM at) * 1000000)::bigint, amount::text, %s::numeric "
        "FROM director.t ORDER BY id",
        (snapshot.version,),
    ).fetchall()
    assert [(*r[:3], _canonical(r[3]), int(r[4])) for r in got] == [
        (*r[:3], _canonical(r[3]), int(r[4])) for r in expected
    ]
