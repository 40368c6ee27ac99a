"""COPY text rows converted to Postgres' binary COPY (`cdc.load.copybinary`), with Postgres
as the oracle: rows printed as text by the server, converted, COPYed back in binary, and
printed again, must be the same text, byte for byte; values of a form the converter does
not know are left to the server (None), never converted wrongly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc.load import copybinary
from cdc.load.copyout import copy_out
from cdc.stream.session import canonical_dsn

pytestmark = pytest.mark.integration

COLUMNS = """
    id int PRIMARY KEY, c_int2 smallint, c_int4 int, c_int8 bigint, c_oid oid,
    c_float4 real, c_float8 float8, c_bool bool, c_uuid uuid, c_date date,
    c_ts timestamp, c_tstz timestamptz, c_ts3 timestamp(3), c_text text, c_varchar varchar(12),
    c_char char(5), c_name name, c_json json, c_jsonb jsonb, c_bytea bytea, c_num numeric,
    c_num9 numeric(9,2), c_num_neg numeric(5,-2), c_num_frac numeric(3,5),
    c_version numeric(39,0)
"""
EDGE_ROWS = f"""
INSERT INTO t VALUES
 (1, 12, 123, 1, 12345, 1.5, 0.1, true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
  '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+02', '2024-02-29 12:34:56.789',
  'plain', 'short', 'ab', 'a_name', '{{"b": [1, 2]}}', '{{"b": [1, 2], "a": null}}',
  '\\x00ff80', 12345.6789, 12345.67, 12300, 0.00123, 340282366920938463463374607431768211455),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, -32768, -2147483648, -9223372036854775808, 0, '-Infinity', 'NaN', false,
  '00000000-0000-0000-0000-000000000000', '0001-01-01', '0001-01-01 00:00:00',
  '1900-01-01 00:00:00+00', '1969-12-31 23:59:59.999', E'tab\\there\\nnew \\\\N back\\\\slash
  ünï 中文 😀 \\b\\f\\v\\r', '', '', '', '[]', '{{}}', '\\x', 'NaN', -9999999.99, -99900,
  -0.00999, 0),
 (4, 32767, 2147483647, 9223372036854775807, 4294967295, 'Infinity', '-0', true,
  'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF', 'infinity', 'infinity', '-infinity', '-infinity',
  repeat('long ', 2000), 'twelve chars', 'abcde', repeat('n', 63), '"a string"',
  '[1, "two", {{"3": 3.5}}]', decode(repeat('5c09', 100), 'hex'), 'Infinity', 0, 0, 0, 1),
 (5, 0, 0, 0, 1, 1e-30, 1.7976931348623157e308, false, gen_random_uuid(), '-infinity',
  '1970-01-01 00:00:00.000001', '1970-01-01 00:00:00+00', '2100-01-01 00:00:00.5',
  'x', 'x', 'x', 'x', 'null', 'null', '\\x5c4e', '-Infinity', 0.01, 100, 0.00001,
  18446744073709551616),
 (6, -1, -1, -1, 7, -3.4028235e38, 5e-324, true, gen_random_uuid(), '294276-12-31',
  '294276-12-31 23:59:59.999999', '2100-12-31 23:59:59.999999+00', '9999-12-31 23:59:59.999',
  E'\\\\N', '\\N', 'a', 'b', '{{"k": "\\\\t"}}', '{{"k": "\\t\\n"}}', '\\x0a0d09',
  0.{"0" * 20}1, 0.1, -100, 0.0, 10000),
 (7, 1, 1, 1, 1, 1, 1, true, gen_random_uuid(), '2000-01-01', '2000-01-01 00:00:00',
  '2000-01-01 00:00:00+00', '2000-01-01 00:00:00', 'y', 'y', 'y', 'y', '1', '1', '\\x01',
  -{"9" * 60}.{"0" * 30}1, -0.01, 99900, 0.00099, 9999)
"""
# Seeded random rows: every type over its range, numerics of every scale and size.
RANDOM_ROWS = """
SELECT setseed(0.42);
INSERT INTO t SELECT g + 100,
  (random() * 65535 - 32768)::int2, (random() * 4e9 - 2e9)::int4,
  ((random() - 0.5) * 1.8e19)::int8, (random() * 4e9)::bigint::oid,
  ((random() - 0.5) * 10 ^ (random() * 70 - 35))::float4,
  ((random() - 0.5) * 10 ^ (random() * 600 - 300))::float8, random() < 0.5,
  gen_random_uuid(), date '0001-01-01' + (random() * 3650000)::int,
  timestamp '0001-01-01' + random() * interval '9000 years' + random() * interval '1 day',
  timestamptz '1800-01-01 00:00:00+00' + random() * interval '400 years'
    + random() * interval '1 day',
  timestamp '1900-01-01' + random() * interval '300 years' + random() * interval '1 day',
  md5(g::text) || CASE WHEN g % 3 = 0 THEN E'\\t\\\\\\n' ELSE '' END,
  left(md5(g::text), (g % 12)), left(md5(g::text), g % 6), md5(g::text)::name,
  json_build_object('g', g, 's', md5(g::text)), jsonb_build_object('g', g, 'f', random()),
  decode(md5(g::text), 'hex'),
  round(((random() - 0.5) * 10 ^ (random() * 40 - 10))::numeric, (random() * 25)::int),
  round(((random() - 0.5) * 2e7)::numeric, 2), round(((random() - 0.5) * 1e7)::numeric, -2),
  round((random() * 0.00999)::numeric, 5),
  floor(random() * 1e38)::numeric * (1 + (g % 3))
FROM generate_series(1, 4000) g
"""
# The settings of every connection (`canonical_dsn`: DateStyle ISO, extra_float_digits,
# hex bytea), with each of these time zones: UTC as the stream has it, and offsets in minutes and
# seconds (Europe/Amsterdam's local mean time before 1937) as a source COPY could print.
ZONES = ("UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam")


def text_of(pg: psycopg.Connection[Any], table: str) -> bytes:
    query = sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT").format(sql.Identifier(table))
    return copy_out(pg, query)[0]


def copy_in(pg: psycopg.Connection[Any], table: str, data: bytes, binary: bool) -> None:
    statement = sql.SQL("COPY {} FROM STDIN{}").format(
        sql.Identifier(table), sql.SQL(" (FORMAT binary)" if binary else "")
    )
    with pg.cursor().copy(statement) as pipe:
        pipe.write(data)


def column_types(pg: psycopg.Connection[Any], table: str) -> list[int]:
    rows = pg.execute(
        "SELECT atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def session(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    assert copybinary.AVAILABLE, "cdc.load._copybinary is not built: run `make install`"
    with psycopg.connect(canonical_dsn(pg_dsn), autocommit=True) as pg:
        pg.execute(f"CREATE TABLE t ({COLUMNS})")
        pg.execute("CREATE TABLE converted (LIKE t)")
        yield pg


@pytest.mark.parametrize("zone", ZONES)
def test_every_value_reads_back_as_the_text_it_was(
    session: psycopg.Connection[Any], zone: str
) -> None:
    session.execute(EDGE_ROWS)
    session.execute(RANDOM_ROWS)
    session.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
    plan = copybinary.plan(column_types(session, "t"))
    assert plan is not None
    text = text_of(session, "t")
    assert text.count(b"\n") == 4007
    binary = copybinary.to_binary(text, plan)
    assert binary is not None
    copy_in(session, "converted", binary, binary=True)
    assert text_of(session, "converted") == text


def test_forms_it_does_not_know_are_left_to_the_server(
    session: psycopg.Connection[Any],
) -> None:
    plan = copybinary.plan(column_types(session, "t"))
    assert plan is not None
    session.execute(EDGE_ROWS)
    session.execute("UPDATE t SET c_date = '0044-03-15 BC' WHERE id = 1")
    text = text_of(session, "t")
    assert copybinary.to_binary(text, plan) is None
    copy_in(session, "converted", text, binary=False)  # the text path reads what it refused
    assert text_of(session, "converted") == text
    octal = text.replace(b"\tplain\t", b"\tpl\\141in\t")  # COPY text input reads \141 as 'a'
    assert octal != text and copybinary.to_binary(octal, plan) is None
    escaped = text.replace(b"\t\\\\x00ff80\t", b"\t\\\\000\\\\377\\\\200\t")  # bytea escape form
    assert escaped != text and copybinary.to_binary(escaped, plan) is None


def test_a_row_of_another_width_is_an_error(session: psycopg.Connection[Any]) -> None:
    plan = copybinary.plan(column_types(session, "t"))
    assert plan is not None
    session.execute(EDGE_ROWS)
    text = text_of(session, "t")
    with pytest.raises(ValueError, match="25 fields"):
        copybinary.to_binary(text.replace(b"\n", b"\tmore\n", 1), plan)
    with pytest.raises(ValueError, match="25 fields"):
        copybinary.to_binary(text[: text.index(b"\t", 10)] + b"\n", plan)
    with pytest.raises(ValueError, match="newline"):
        copybinary.to_binary(text[:-1], plan)


def test_a_plan_only_for_types_it_converts(session: psycopg.Connection[Any]) -> None:
    types = column_types(session, "t")
    assert copybinary.plan(types) is not None
    session.execute("CREATE TYPE mood AS ENUM ('ok')")
    session.execute("ALTER TABLE t ADD c_array int[], ADD c_interval interval, ADD c_mood mood")
    added = column_types(session, "t")[len(types) :]
    for oid in added:
        assert copybinary.plan([*types, oid]) is None
    assert copybinary.plan([]) is None
