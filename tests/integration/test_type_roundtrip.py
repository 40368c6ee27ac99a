"""Every mapped type from Postgres text to ClickHouse and back; catalog lookups; target DDL.

Values are read in Postgres' text output (what pgoutput sends), with the session settings
of the replication connection, encoded by `RowEncoder`, inserted into a table made by
`clickhouse_table`, and compared with what Postgres holds.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc.describe import describe_relation, describe_table
from cdc.errors import Action, CdcError, ErrorKind
from cdc.protocol.messages import Relation, RelationColumn
from cdc.protocol.tags import ReplicaIdentity
from cdc.schema import Column, TableSchema, TypeKind
from cdc.sinks.clickhouse import ddl as ch_ddl
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.clickhouse.types import PgType, clickhouse_type
from cdc.sinks.clickhouse.values import INSERT_SETTINGS, RowEncoder
from cdc.sinks.historic import ddl as pg_ddl
from cdc.stream.publications import publication_tables
from tests.harness import ClickHouseServer

SESSION_SETTINGS = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, MDY'",
    "SET IntervalStyle = postgres",
    "SET extra_float_digits = 3",
    "SET bytea_output = hex",
)
NINES = "9" * 38
TRICKY_TEXT = "tab\there\nnew\rline \\N back\\slash 'single' \"double\" {a,b} ünï 中文 😀"

# name, declared type, typed-select cast (for types psycopg does not load), values by row
# (row 2 is all NULL; a missing row value means NULL).
COLUMNS: list[tuple[str, str, str, dict[int, str]]] = [
    ("c_int2", "smallint", "", {1: "12", 3: "-32768", 4: "32767"}),
    ("c_int4", "integer", "", {1: "123", 3: "-2147483648", 4: "2147483647"}),
    ("c_int8", "bigint", "", {1: "1", 3: "-9223372036854775808", 4: "9223372036854775807"}),
    ("c_oid", "oid", "", {1: "12345", 3: "0", 4: "4294967295"}),
    ("c_num", "numeric(10,2)", "", {1: "12345.67", 3: "-99999999.99", 4: "0.01"}),
    (
        "c_num_wide",
        "numeric(76,38)",
        "",
        {1: "1.5", 3: f"-{NINES}.{NINES}", 4: "0." + "0" * 37 + "1"},
    ),
    ("c_num_frac", "numeric(38,38)", "", {1: "0.5", 3: f"0.{NINES}", 4: "-0." + "0" * 37 + "1"}),
    ("c_numeric", "numeric", "", {1: "3.14159", 3: f"{NINES}.{NINES}", 4: "-0.000100"}),
    ("c_float4", "real", "", {1: "1.1", 3: "'NaN'", 4: "'-Infinity'"}),
    ("c_float8", "double precision", "", {1: "0.1", 3: "'Infinity'", 4: "1.7976931348623157e308"}),
    ("c_bool", "boolean", "", {1: "true", 3: "false", 4: "true"}),
    ("c_text", "text", "", {1: "'hello'", 3: "%(tricky)s", 4: "''"}),
    ("c_text_nn", "text NOT NULL", "", {1: "'x'", 2: "''", 3: "%(tricky)s", 4: "'\\N'"}),
    ("c_varchar", "varchar(20)", "", {1: "'v'", 3: "'ünïcödé 中文 😀'", 4: "''"}),
    ("c_char", "char(5)", "", {1: "'ab'", 3: "'a\tb'"}),
    ("c_name", "name", "", {1: "'nm'"}),
    ("c_uuid", "uuid", "", {1: "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"}),
    ("c_date", "date", "", {1: "'2024-02-29'", 3: "'1900-01-01'", 4: "'2299-12-31'"}),
    (
        "c_ts",
        "timestamp",
        "",
        {1: "'2024-01-02 03:04:05.123456'", 3: "'1900-01-01'", 4: "'2299-12-31 23:59:59.999999'"},
    ),
    (
        "c_tstz",
        "timestamptz",
        "",
        {
            1: "'2024-01-02 03:04:05.5+05:30'",
            3: "'1900-01-01 00:00:00+00'",
            4: "'2299-12-31 23:59:59.999999+00'",
        },
    ),
    ("c_time", "time", "::text", {1: "'12:34:56.789'", 3: "'00:00'", 4: "'24:00:00'"}),
    ("c_timetz", "timetz", "", {1: "'12:34:56+02'"}),
    ("c_interval", "interval", "", {1: "'1 day 2 hours'", 3: "'-1 year 2 mons'", 4: "'1 us'"}),
    ("c_json", "json", "", {1: """'{"b": 1,  "a": [1, "x\\ty"]}'""", 3: "'\"str\"'"}),
    ("c_jsonb", "jsonb", "", {1: """'{"a": "tab\\t", "b": [1, null]}'""", 3: "'[1, 2]'"}),
    ("c_bytea", "bytea", "", {1: "'\\x0102'", 3: "'\\x00ff5c092722'", 4: "''"}),
    ("c_mood", "src.mood", "", {1: "'happy'", 3: "'it''s \"odd\"\\'"}),
    ("c_inet", "inet", "", {1: "'192.168.0.1'", 3: "'::1/128'"}),
    ("c_cidr", "cidr", "", {1: "'10.0.0.0/8'"}),
    ("c_macaddr", "macaddr", "", {1: "'08:00:2b:01:02:03'"}),
    ("c_domain", "src.positive", "::integer", {1: "5"}),
    ("c_pair", "src.pair", "", {1: "ROW(1, 'x y')", 3: "ROW(NULL, 'a\"b')"}),
    ("c_range", "int4range", "", {1: "'[1,10)'", 3: "'empty'"}),
    ("c_point", "point", "", {1: "'(1.5,2)'"}),
    ("c_money", "money", "", {1: "12.34"}),
    ("c_bit", "bit varying(8)", "", {1: "B'1010'"}),
    ("c_xml", "xml", "", {1: "'<a>x &amp; y</a>'"}),
    ("c_int_arr", "integer[]", "", {1: "'{1,2,3}'", 3: "'{}'", 4: "'{NULL,-1}'"}),
    ("c_int_arr2", "integer[][]", "", {1: "'{{1,2},{3,4}}'", 3: "'{}'", 4: "'{{NULL,1}}'"}),
    (
        "c_text_arr",
        "text[]",
        "",
        {
            1: "'{a,\"b c\"}'",
            3: "ARRAY['q\"', 'back\\slash', E'tab\\t', 'NULL', '', NULL, 'ü', E'nl\\n', '{}', "
            "'a,b', 'it''s', %(tricky)s]",
            4: "'{}'",
        },
    ),
    ("c_num_arr", "numeric[]", "", {1: "'{1.5,-2}'", 3: "'{NULL}'"}),
    ("c_bool_arr", "boolean[]", "", {1: "'{t,f,NULL}'"}),
    (
        "c_tstz_arr",
        "timestamptz[]",
        "",
        {1: "'{\"2024-01-01 00:00:00+00\",NULL}'", 3: "'{\"2299-12-31 23:59:59.999999+00\"}'"},
    ),
    ("c_date_arr", "date[]", "", {1: "'{2024-01-01,NULL}'"}),
    ("c_uuid_arr", "uuid[]", "", {1: "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'"}),
    ("c_bytea_arr", "bytea[]", "", {1: "ARRAY['\\x01'::bytea, NULL, '\\x5c2227'::bytea]"}),
    ("c_float_arr", "float8[]", "", {1: "'{NaN,Infinity,-Infinity,1.5}'"}),
    (
        "c_mood_arr",
        "src.mood[]",
        "::text[]",
        {1: "'{happy,NULL}'", 3: "'{\"it''s \\\"odd\\\"\\\\\"}'"},
    ),
    ("c_box_arr", "box[]", "::text[]", {1: "ARRAY[box '((1,2),(3,4))', NULL]"}),
]
ROW_IDS = (1, 2, 3, 4)


def set_session(conn: psycopg.Connection[Any]) -> None:
    for statement in SESSION_SETTINGS:
        conn.execute(statement)


def text_rows(conn: psycopg.Connection[Any], query: bytes) -> list[list[bytes | None]]:
    """Rows in Postgres' text output format, as the replication stream carries them.

    (`col::text` is not the same: it strips char(n) padding and adds /32 to inet.)"""
    result = conn.pgconn.exec_(query)
    assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
    return [
        [result.get_value(row, col) for col in range(result.nfields)]
        for row in range(result.ntuples)
    ]


def create_source(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE SCHEMA src")
    conn.execute("""CREATE TYPE src.mood AS ENUM ('happy', 'sad', 'it''s "odd"\\')""")
    conn.execute("CREATE DOMAIN src.positive AS integer CHECK (VALUE > 0)")
    conn.execute("CREATE TYPE src.pair AS (a integer, b text)")
    definitions = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type))
        for name, pg_type, _, _ in COLUMNS
    )
    conn.execute(
        sql.SQL('CREATE TABLE src."All Types" (id bigint PRIMARY KEY, {})').format(definitions)
    )
    for row_id in ROW_IDS:
        names = [sql.Identifier("id")]
        values: list[sql.Composable] = [sql.Literal(row_id)]
        for name, _, _, by_row in COLUMNS:
            if row_id in by_row:
                names.append(sql.Identifier(name))
                values.append(sql.SQL(by_row[row_id]))
        conn.execute(
            sql.SQL('INSERT INTO src."All Types" ({}) VALUES ({})').format(
                sql.SQL(", ").join(names), sql.SQL(", ").join(values)
            ),
            {"tricky": TRICKY_TEXT},
        )


def normalize(value: Any) -> Any:
    """Comparable form: NaN equal to itself, datetimes as naive UTC, lists deeply."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, list):
        return [normalize(item) for item in value]
    return value


def hex_upper(value: bytes | None) -> str | None:
    return None if value is None else value.hex().upper()


def ch_select(name: str, ch_type: str, pg_type: str) -> str:
    quoted = quote_identifier(name)
    if pg_type == "bytea":
        return f"if(isNull({quoted}), NULL, hex({quoted}))"
    if pg_type == "bytea[]":
        return f"arrayMap(x -> hex(x), {quoted})"
    del ch_type
    return quoted


def expected_value(pg_type: str, ch_type: str, typed: Any, text: bytes | None) -> Any:
    """What ClickHouse should return for a value Postgres holds."""
    if pg_type == "bytea":
        return hex_upper(typed)
    if pg_type == "bytea[]":
        return [hex_upper(item) for item in typed or []]
    if ch_type.startswith("Array("):
        return normalize(typed or [])  # a NULL array is stored as []
    if "String" in ch_type:
        return None if text is None else text.decode()
    if "Float32" in ch_type and typed is not None:
        return normalize(struct.unpack("f", struct.pack("f", typed))[0])
    return normalize(typed)


def test_every_type_round_trips(pg: psycopg.Connection[Any], ch: Any, ch_database: str) -> None:
    set_session(pg)
    create_source(pg)
    table = describe_table(pg, "src", "All Types")
    assert table.primary_key == ("id",)
    ch.command(ch_ddl.clickhouse_table(ch_database, table))

    rows = text_rows(pg, b'SELECT * FROM src."All Types" ORDER BY id')
    encoder = RowEncoder(table)
    block = b"".join(
        encoder.encode_versioned(row, (index + 1) << 64, False) for index, row in enumerate(rows)
    )
    qualified = f"{quote_identifier(ch_database)}.{quote_identifier(table.name)}"
    ch.raw_insert(
        qualified, encoder.insert_columns, insert_block=block, fmt="TabSeparated",
        settings=INSERT_SETTINGS,
    )  # fmt: skip

    typed_select = sql.SQL(", ").join(
        [sql.Identifier("id")]
        + [sql.SQL("{}{}").format(sql.Identifier(n), sql.SQL(cast)) for n, _, cast, _ in COLUMNS]
    )
    typed_rows = pg.execute(
        sql.SQL('SELECT {} FROM src."All Types" ORDER BY id').format(typed_select)
    ).fetchall()
    ch_types = {column.name: clickhouse_type(column) for column in table.columns}
    selects = ", ".join(
        ["id"] + [ch_select(name, ch_types[name], pg_type) for name, pg_type, _, _ in COLUMNS]
    )
    ch_rows = ch.query(f"SELECT {selects} FROM {qualified} FINAL ORDER BY id").result_rows
    assert [row[0] for row in ch_rows] == list(ROW_IDS)

    mismatches = []
    for typed, text, got in zip(typed_rows, rows, ch_rows, strict=True):
        for position, (name, pg_type, _, _) in enumerate(COLUMNS, start=1):
            want = expected_value(pg_type, ch_types[name], typed[position], text[position])
            if normalize(got[position]) != want:
                mismatches.append((typed[0], name, want, got[position]))
    assert mismatches == []


def test_tombstones_of_not_null_columns_insert(
    pg: psycopg.Connection[Any], ch: Any, ch_database: str
) -> None:
    pg.execute("CREATE TYPE mood AS ENUM ('a')")
    pg.execute(
        "CREATE TABLE nn (id int PRIMARY KEY, i int NOT NULL, t text NOT NULL, "
        "b boolean NOT NULL, u uuid NOT NULL, d date NOT NULL, ts timestamp NOT NULL, "
        "tstz timestamptz NOT NULL, n numeric NOT NULL, n2 numeric(10,2) NOT NULL, "
        "f float8 NOT NULL, m mood NOT NULL, a int[] NOT NULL, j jsonb NOT NULL)"
    )
    table = describe_table(pg, "public", "nn")
    assert not any(column.nullable for column in table.columns)
    ch.command(ch_ddl.clickhouse_table(ch_database, table))
    encoder = RowEncoder(table)
    tombstone = [b"7", *[None] * (len(table.columns) - 1)]
    qualified = f"{quote_identifier(ch_database)}.{quote_identifier('nn')}"
    ch.raw_insert(
        qualified,
        encoder.insert_columns,
        insert_block=encoder.encode_versioned(tombstone, 1 << 64, True),
        fmt="TabSeparated",
        settings=INSERT_SETTINGS,
    )
    [row] = ch.query(f"SELECT id, t, b, d, n, a, _is_deleted FROM {qualified}").result_rows
    assert row[0] == 7 and row[1] == "" and row[2] is False and row[5] == [] and row[6] == 1
    assert row[3].isoformat() == "1970-01-01" and row[4] == 0


def test_type_oids_match_the_catalog(pg: psycopg.Connection[Any]) -> None:
    names = {member.name.lower(): member.value for member in PgType}
    rows = pg.execute(
        "SELECT typname, oid::int FROM pg_type WHERE typname = ANY(%s)", (list(names),)
    ).fetchall()
    assert dict(rows) == names


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("d", "'1899-12-31'"),
        ("d", "'2300-01-01'"),
        ("d", "'0044-03-15 BC'"),
        ("ts", "'1899-12-31 23:59:59.999999'"),
        ("ts", "'2300-01-01 00:00:00'"),
        ("tstz", "'2300-01-01 00:00:00+00'"),
        ("tstz", "'12000-01-01 00:00:00+00'"),
        ("n", "'NaN'"),
        ("n", "'Infinity'"),
        ("n", "1e39"),
        ("n", "1e-39"),
        ("bounded", "'NaN'"),
        ("arr", "'{\"1899-12-31 00:00:00+00\"}'"),
    ],
)
def test_out_of_range_values_are_refused(
    pg: psycopg.Connection[Any], column: str, value: str
) -> None:
    set_session(pg)
    pg.execute(
        "CREATE TABLE edge (id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz, "
        "n numeric, bounded numeric(10,2), arr timestamptz[])"
    )
    pg.execute(
        sql.SQL("INSERT INTO edge (id, {}) VALUES (1, {})").format(
            sql.Identifier(column),
            sql.SQL(value),
        )
    )
    encoder = RowEncoder(describe_table(pg, "public", "edge"))
    [row] = text_rows(pg, b"SELECT * FROM edge")
    with pytest.raises(CdcError) as info:
        encoder.encode(row)
    assert info.value.kind is ErrorKind.VALUE_OUT_OF_RANGE
    assert f"column {column!r}" in str(info.value)


def relation_of(pg: psycopg.Connection[Any], table: str, identity: str) -> Relation:
    """A Relation message as pgoutput would send it for `table` right now."""
    rows = pg.execute(
        "SELECT c.oid::int, a.attname, a.atttypid::int, a.atttypmod, "
        "  coalesce(a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]), false) "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "  AND NOT a.attisdropped "
        "LEFT JOIN pg_index i ON i.indrelid = c.oid AND (i.indisreplident OR "
        "  (i.indisprimary AND c.relreplident = 'd')) "
        "WHERE c.relname = %s ORDER BY a.attnum",
        (table,),
    ).fetchall()
    columns = tuple(RelationColumn(key, name, oid, typmod) for _, name, oid, typmod, key in rows)
    return Relation(None, rows[0][0], "public", table, ReplicaIdentity(identity), columns)


def test_describe_relation(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TYPE mood AS ENUM ('a', 'b')")
    pg.execute("CREATE DOMAIN amount AS numeric(12,3)")
    pg.execute(
        "CREATE TABLE t (b text NOT NULL, a int, m mood[], x amount NOT NULL, grid int[][], "
        "gone int NOT NULL, "
        "PRIMARY KEY (a, b) INCLUDE (x))"
    )
    relation = relation_of(pg, "t", "d")
    table = describe_relation(pg, relation)
    assert table.primary_key == ("a", "b")
    assert table.key_indexes == (1, 0)
    assert [c.nullable for c in table.columns] == [False, False, True, False, True, False]
    assert [c.pg_type for c in table.columns] == [
        "text", "integer", "public.mood[]", "public.amount", "integer[]", "integer"
    ]  # fmt: skip
    mood_array, amount, grid = table.column("m"), table.column("x"), table.column("grid")
    assert mood_array.kind is TypeKind.ARRAY and mood_array.element is not None
    assert mood_array.element.kind is TypeKind.ENUM and mood_array.element.pg_type == "public.mood"
    assert amount.kind is TypeKind.DOMAIN and amount.base_type is not None
    assert amount.base_type.pg_type == "numeric(12,3)"
    assert clickhouse_type(amount) == "Decimal(12, 3)"
    assert clickhouse_type(grid) == "Array(Array(Nullable(Int32)))"

    # A column the catalog no longer has is nullable; types still come from the message.
    pg.execute("ALTER TABLE t DROP COLUMN gone")
    assert describe_relation(pg, relation).column("gone").nullable
    # With the table gone, the key flags of the message stand in for the primary key.
    pg.execute("DROP TABLE t")
    gone = describe_relation(pg, relation)
    assert gone.primary_key == ("b", "a")
    assert gone.column("m").pg_type == "public.mood[]"


def test_a_column_named_as_a_targets_own_is_refused_with_what_to_rename(
    pg: psycopg.Connection[Any],
) -> None:
    """A source column named `_version` (optimistic locking) made the historic upsert fail
    with "column specified more than once" and the ClickHouse table impossible to make."""
    pg.execute("CREATE TABLE locked (id int PRIMARY KEY, _version int, v text)")
    with pytest.raises(CdcError, match=r"column\(s\) _version have the names") as info:
        describe_table(pg, "public", "locked")
    assert info.value.kind is ErrorKind.UNSUPPORTED_TABLE
    assert info.value.policy.action is Action.QUARANTINE_TABLE
    assert info.value.table == ("public", "locked")
    with pytest.raises(CdcError, match="RENAME COLUMN"):
        describe_relation(pg, relation_of(pg, "locked", "d"))


def test_describe_relation_without_primary_key(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE TABLE f (a int NOT NULL, b text)")
    pg.execute("ALTER TABLE f REPLICA IDENTITY FULL")
    with pytest.raises(CdcError, match=r"public\.f has no primary key.*FULL") as info:
        describe_relation(pg, relation_of(pg, "f", "f"))
    assert info.value.kind is ErrorKind.NO_KEY
    assert "schema change" not in info.value.policy.hint  # it never had a key
    assert "ADD PRIMARY KEY" in str(info.value)
    with pytest.raises(CdcError, match="no primary key"):
        describe_table(pg, "public", "f")

    # Without FULL it is published for inserts only: an append-only log, keyed by version.
    pg.execute("ALTER TABLE f REPLICA IDENTITY DEFAULT")
    assert describe_relation(pg, relation_of(pg, "f", "d")).append_only
    assert describe_table(pg, "public", "f").append_only

    pg.execute("CREATE UNIQUE INDEX f_a ON f (a)")
    pg.execute("ALTER TABLE f REPLICA IDENTITY USING INDEX f_a")
    assert describe_relation(pg, relation_of(pg, "f", "i")).primary_key == ("a",)
    assert describe_table(pg, "public", "f").primary_key == ("a",)


def test_replica_identity_index_is_the_key_even_with_a_primary_key(
    pg: psycopg.Connection[Any],
) -> None:
    pg.execute("CREATE TABLE r (id serial PRIMARY KEY, a int NOT NULL, b text NOT NULL)")
    pg.execute("CREATE UNIQUE INDEX r_ba ON r (b, a)")
    pg.execute("ALTER TABLE r REPLICA IDENTITY USING INDEX r_ba")
    assert describe_table(pg, "public", "r").primary_key == ("b", "a")
    assert describe_relation(pg, relation_of(pg, "r", "i")).primary_key == ("b", "a")


def test_describe_table_and_published_tables(pg: psycopg.Connection[Any]) -> None:
    pg.execute('CREATE SCHEMA "Dir"')
    pg.execute('CREATE TABLE "Dir"."Odd Name" ("Key" int PRIMARY KEY, v text)')
    pg.execute("CREATE TABLE plain (id int PRIMARY KEY)")
    pg.execute('CREATE PUBLICATION pub FOR TABLE "Dir"."Odd Name", plain')
    assert publication_tables(pg, "pub") == [("Dir", "Odd Name"), ("public", "plain")]
    table = describe_table(pg, "Dir", "Odd Name")
    assert table.primary_key == ("Key",) and table.replica_identity == "d"
    with pytest.raises(CdcError, match="does not exist"):
        describe_table(pg, "Dir", "missing")


def live_rows(pg: psycopg.Connection[Any], view: str) -> list[tuple[Any, ...]]:
    return pg.execute(
        sql.SQL("SELECT * FROM historic.{} ORDER BY 1").format(sql.Identifier(view))
    ).fetchall()


def test_historic_table_and_current_view(pg: psycopg.Connection[Any]) -> None:
    pg.execute('CREATE TABLE "It\'s" (id int PRIMARY KEY, name text NOT NULL, tags text[])')
    table = describe_table(pg, "public", "It's")
    for statement in (
        pg_ddl.historic_schema("historic"),
        pg_ddl.historic_truncations_table("historic"),
        pg_ddl.historic_table("historic", table),
        pg_ddl.historic_current_view("historic", table),
    ):
        pg.execute(statement)
        pg.execute(statement)  # idempotent
    insert = sql.SQL(
        'INSERT INTO historic."It\'s" (id, name, tags, _version, _is_deleted) '
        "VALUES (%s, %s, %s, %s, %s)"
    )
    big = 1 << 64
    pg.execute(insert, (1, "live", ["a"], 5 * big + 1, False))
    pg.execute(insert, (2, None, None, 5 * big + 2, True))  # a tombstone: key only
    pg.execute(insert, (3, "old", None, 2 * big + 1, False))
    pg.execute(insert, (4, "max", None, 2**128 - 1, False))
    assert live_rows(pg, "It's_current") == [(1, "live", ["a"]), (3, "old", None), (4, "max", None)]

    pg.execute("INSERT INTO historic._cdc_truncations VALUES (%s, %s)", ("It's", Decimal(3 * big)))
    assert live_rows(pg, "It's_current") == [(1, "live", ["a"]), (4, "max", None)]

    extra = Column("extra", 25, -1, "text", False, TypeKind.BASE)
    added = TableSchema(table.schema, table.name, (*table.columns, extra), ("id",), "d")
    pg.execute(pg_ddl.historic_add_column("historic", added.name, added.column("extra")))
    pg.execute(pg_ddl.historic_drop_not_null("historic", added.name, "name"))
    pg.execute(pg_ddl.historic_current_view("historic", added))
    assert live_rows(pg, "It's_current")[0] == (1, "live", ["a"], None)


def test_clickhouse_current_view(ch: Any, ch_database: str, pg: psycopg.Connection[Any]) -> None:
    pg.execute('CREATE TABLE "it\'s" (id int PRIMARY KEY, name text)')
    table = describe_table(pg, "public", "it's")
    ch.command(ch_ddl.clickhouse_table(ch_database, table))
    ch.command(ch_ddl.clickhouse_truncations_table(ch_database))
    ch.command(ch_ddl.clickhouse_current_view(ch_database, table))
    encoder = RowEncoder(table)
    big = 1 << 64
    lines: Sequence[bytes] = [
        encoder.encode_versioned([b"1", b"old"], 2 * big, False),
        encoder.encode_versioned([b"1", b"new"], 3 * big, False),
        encoder.encode_versioned([b"2", b"gone"], 2 * big, False),
        encoder.encode_versioned([b"2", None], 3 * big + 1, True),
        encoder.encode_versioned([b"3", b"max"], 2**128 - 1, False),
    ]
    qualified = f"{quote_identifier(ch_database)}.{quote_identifier(table.name)}"
    ch.raw_insert(
        qualified, encoder.insert_columns, b"".join(lines), INSERT_SETTINGS, "TabSeparated"
    )
    view = f"{quote_identifier(ch_database)}.{quote_identifier(table.name + '_current')}"
    assert ch.query(f"SELECT * FROM {view} ORDER BY id").result_rows == [(1, "new"), (3, "max")]

    watermarks = f"{quote_identifier(ch_database)}.`_cdc_truncations`"
    ch.command(
        f"INSERT INTO {watermarks} VALUES ({{t:String}}, {{v:UInt128}})",
        parameters={"t": "it's", "v": 3 * big + 5},
    )
    assert ch.query(f"SELECT * FROM {view} ORDER BY id").result_rows == [(3, "max")]

    pg.execute('ALTER TABLE "it\'s" ADD COLUMN score bigint')
    grown = describe_table(pg, "public", "it's")
    ch.command(ch_ddl.clickhouse_add_column(ch_database, table.name, grown.column("score")))
    ch.command(ch_ddl.clickhouse_add_column(ch_database, table.name, grown.column("score")))
    ch.command(ch_ddl.clickhouse_make_nullable(ch_database, table.name, "name", "String"))
    ch.command(ch_ddl.clickhouse_current_view(ch_database, grown))
    assert ch.query(f"SELECT * FROM {view}").result_rows == [(3, "max", None)]


def test_clickhouse_targets_made_whole_after_a_kill_between_statements(
    clickhouse_server: ClickHouseServer, ch: Any, ch_database: str, pg: psycopg.Connection[Any]
) -> None:
    """ClickHouse DDL is not transactional: a daemon killed after CREATE TABLE and before
    CREATE VIEW leaves a table without its view. The next run makes the view."""
    pg.execute("CREATE TABLE halfmade (id int PRIMARY KEY, name text)")
    table = describe_table(pg, "public", "halfmade")
    ch.command(ch_ddl.clickhouse_table(ch_database, table))  # what the killed run made

    ClickHouseSink(clickhouse_server.url, ch_database, client=ch).prepare([table])
    view = f"{quote_identifier(ch_database)}.`halfmade_current`"
    assert ch.query(f"SELECT count() FROM {view}").result_rows == [(0,)]


def test_clickhouse_view_keeps_a_renamed_column_when_a_replay_brings_the_old_layout(
    clickhouse_server: ClickHouseServer, ch: Any, ch_database: str, pg: psycopg.Connection[Any]
) -> None:
    """A column renamed at the source arrives as a new column. A daemon started again
    replays rows from before the rename, with the old layout: its first look at the table
    made the view again from that layout, without the new column, which later batches
    (the column known) never put back."""
    pg.execute("CREATE TABLE renamed (id int PRIMARY KEY, state text)")
    before = describe_table(pg, "public", "renamed")
    pg.execute("ALTER TABLE renamed RENAME COLUMN state TO stage")
    after = describe_table(pg, "public", "renamed")
    ClickHouseSink(clickhouse_server.url, ch_database, client=ch).prepare([before])
    ClickHouseSink(clickhouse_server.url, ch_database, client=ch).prepare([after])
    ClickHouseSink(clickhouse_server.url, ch_database, client=ch).prepare([before])  # replay
    view = f"{quote_identifier(ch_database)}.`renamed_current`"
    columns = [r[0] for r in ch.query(f"DESCRIBE TABLE {view}").result_rows]
    assert columns == ["id", "state", "stage"]
