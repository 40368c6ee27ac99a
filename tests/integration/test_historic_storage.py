"""Wide values on their way into historic: staged rows of every width (inline in the stage
up to a page, out of line beyond), compressed with lz4 where the server has it, and kept
as they are when their row is deleted. Rows read or marked by key probe the key index."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from cdc.describe import describe_table
from cdc.sinks.historic.sql import array_literal, donors_sql, tombstones_sql
from cdc.sinks.historic.writers import Writers
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step, wait_until

NOTES = """
CREATE SCHEMA director;
CREATE TABLE director.notes (id int PRIMARY KEY, qty int, note text);
"""


def test_wide_values_round_trip_through_the_stage_compress_and_stay_when_deleted(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute(NOTES)
    lz4 = pg.execute(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    ).fetchone()
    notes = {
        1: "abc" * 4000,  # compresses
        2: os.urandom(1536).hex(),  # 3 kB that does not: out of line in both tables
        3: os.urandom(6000).hex(),  # 12 kB that does not: out of line in the stage too
        4: "short",
    }
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, batch_size=1)
    with running_daemon(settings, clickhouse_server.client) as running:
        with pg.transaction():
            for key, note in notes.items():
                pg.execute("INSERT INTO director.notes VALUES (%s, 0, %s)", (key, note))
        # Staged updates: one rewrites every value, one leaves the notes unchanged (filled
        # from historic), and a delete.
        pg.execute("UPDATE director.notes SET note = note || 'x', qty = 1 WHERE id IN (2, 3)")
        pg.execute("UPDATE director.notes SET qty = qty + 1")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["notes"], running=running)
        # Tombstones completed from their own rows: historic marks those rows deleted,
        # keeping their values (the wide one out of line); ClickHouse gets the same row.
        kept = pg.execute("SELECT id, qty, note FROM director.notes WHERE id IN (2, 4)")
        before = {row[0]: row[1:] for row in kept.fetchall()}
        pg.execute("DELETE FROM director.notes WHERE id IN (2, 4)")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["notes"], running=running)
    tombstones = pg.execute(
        "SELECT id, qty, note, _version::text, _commit_time IS NOT NULL FROM historic.notes "
        "WHERE _is_deleted ORDER BY id"
    ).fetchall()
    assert [(i, q, n) for i, q, n, _, _ in tombstones] == [(k, *v) for k, v in before.items()]
    assert all(stamped for *_, stamped in tombstones)
    in_clickhouse = clickhouse_server.client.query(
        "SELECT id, argMax(qty, _version), argMax(note, _version), toString(max(_version)) "
        f"FROM `{ch_database}`.notes GROUP BY id HAVING argMax(_is_deleted, _version) "
        "ORDER BY id"  # FINAL leaves deleted rows out
    ).result_rows
    assert [tuple(r) for r in in_clickhouse] == [t[:4] for t in tombstones]
    method = pg.execute("SELECT pg_column_compression(note) FROM historic.notes WHERE id = 1")
    assert method.fetchone() == (("lz4" if lz4 == (True,) else "pglz"),)
    assert pg.execute("SELECT count(*) FROM historic.notes WHERE NOT _is_deleted").fetchone() == (
        2,
    )


PROBED = """
CREATE SCHEMA director;
CREATE TABLE director.probed (id bigint PRIMARY KEY, qty int);
CREATE SCHEMA historic;
CREATE TABLE historic.probed (
    id bigint PRIMARY KEY, qty int, _version numeric, _is_deleted boolean,
    _commit_time timestamptz
);
INSERT INTO historic.probed SELECT i, i, i, false, now() FROM generate_series(1, 20000) i;
ANALYZE historic.probed;
"""


def _toast_chunks(pg: psycopg.Connection[Any]) -> set[int]:
    """The ids of the out-of-line values historic.notes holds (its TOAST table's live rows)."""
    toast = pg.execute(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'historic.notes'::regclass"
    ).fetchone()
    assert toast is not None
    return {r[0] for r in pg.execute(f"SELECT DISTINCT chunk_id::int8 FROM {toast[0]}")}


def test_an_unchanged_wide_value_keeps_its_stored_copy_and_a_changed_one_is_written(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """Updates that leave a TOASTed value alone at the source leave its stored copy in
    historic alone too (the upsert keeps the row's value when the completed one is equal);
    a value changed to another of the same length is written."""
    pg.execute(NOTES)
    pg.execute("ALTER TABLE director.notes ALTER note SET STORAGE EXTERNAL")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, batch_size=10)
    with running_daemon(settings, clickhouse_server.client) as running:
        pg.execute(
            "INSERT INTO director.notes SELECT g, 0, CASE WHEN g % 5 = 0 THEN 'short ' || g "
            "ELSE (SELECT string_agg(md5(random()::text || g || i), '') "
            "      FROM generate_series(1, 80) i) "  # 2.5 kB that does not compress: out of line
            "END FROM generate_series(1, 60) g"
        )
        wait_in_step(pg, clickhouse_server.client, ch_database, ["notes"], running=running)
        stored = _toast_chunks(pg)
        assert len(stored) == 48
        for _ in range(3):  # unchanged notes, completed from historic by the sink
            pg.execute("UPDATE director.notes SET qty = qty + 1")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["notes"], running=running)
        assert _toast_chunks(pg) == stored
        pg.execute(  # same length, other bytes: written
            "UPDATE director.notes SET note = upper(note), qty = qty + 1 WHERE id <= 10"
        )
        pg.execute("UPDATE director.notes SET note = note WHERE id > 50")  # rewritten, equal
        wait_in_step(pg, clickhouse_server.client, ch_database, ["notes"], running=running)
    after = _toast_chunks(pg)
    assert len(after) == 48 and len(stored - after) == 8  # the 8 wide notes of ids 1-10
    changed = pg.execute(
        "SELECT count(*) FROM historic.notes h JOIN director.notes d USING (id) "
        "WHERE h.note = d.note AND h.qty = d.qty AND d.note = upper(d.note) AND id <= 10"
    ).fetchone()
    assert changed == (10,)


def _joins(conn: psycopg.Connection[Any], statement: Any, params: list[str]) -> set[str]:
    plan = conn.execute(b"EXPLAIN (FORMAT JSON) " + statement.as_bytes(conn), params)
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        found.add(f"{node['Node Type']} {node.get('Index Name', '')}".strip())
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan.fetchone()[0][0]["Plan"])  # type: ignore[index]
    return found


def test_donors_and_tombstones_probe_the_key_index_where_the_planner_would_hash_the_table(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    pg.execute(PROBED)
    layout = describe_table(pg, "director", "probed")
    keys = array_literal([b"%d" % k for k in range(1, 20000, 5)])  # 4,000 of 20,000
    versions = array_literal([b"%d" % (k << 64) for k in range(1, 20000, 5)])
    times = array_literal([b"2026-01-01 00:00:00+00"] * 4000)
    statements = [
        (donors_sql("historic", layout), [keys]),
        (tombstones_sql("historic", layout), [keys, versions, times]),
    ]
    # A session as the planner is left to itself hashes the whole table for these.
    assert all("Hash Join" in _joins(pg, sql, params) for sql, params in statements)
    writers = Writers(pg_dsn, 1, lambda: None)
    try:
        with writers.transaction() as conn:
            for sql, params in statements:
                joins = _joins(conn, sql, params)
                assert "Index Scan probed_pkey" in joins and "Nested Loop" in joins, joins
                assert not {"Hash Join", "Merge Join", "Seq Scan"} & joins, joins
    finally:
        writers.close()


def test_a_historic_database_without_the_source_types_holds_their_values(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """`historic_dsn` in another database: the source's enums, domains and composites do
    not exist there, and making the historic table failed (the daemon stopped). Now their
    values are held as the domain's base type or as text (arrays as arrays of that), and
    the stores compare equal."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TYPE director.mood AS ENUM ('sad', 'ok')")
    pg.execute("CREATE DOMAIN director.cents AS numeric(10,2) CHECK (VALUE >= 0)")
    pg.execute("CREATE TYPE director.pair AS (a int, b text)")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, m director.mood, c director.cents, "
               "p director.pair, ms director.mood[])")  # fmt: skip
    pg.execute("INSERT INTO director.t VALUES (1, 'ok', 1.5, '(1,x)', '{sad,ok}')")
    other = f"{pg.info.dbname}_historic"
    pg.execute(f'CREATE DATABASE "{other}"')
    try:
        historic_dsn = make_conninfo(pg_dsn, dbname=other)
        settings = make_settings(pg_dsn, clickhouse_server.url, ch_database,
                                 historic_dsn=historic_dsn)  # fmt: skip
        with running_daemon(settings, clickhouse_server.client):
            pg.execute("INSERT INTO director.t VALUES (2, 'sad', 2, '(2,\"y z\")', '{}')")
            pg.execute("ALTER TABLE director.t ADD COLUMN later director.mood DEFAULT 'sad'")
            pg.execute("INSERT INTO director.t VALUES (3, NULL, NULL, NULL, NULL, 'ok')")
            with psycopg.connect(historic_dsn, autocommit=True) as historic:
                wait_until(lambda: historic.execute(
                    "SELECT count(*) FROM historic.t_current").fetchone() == (3,),
                    what="the rows in historic")  # fmt: skip
                rows = historic.execute(
                    "SELECT id, m, c, p, ms, later FROM historic.t_current ORDER BY id"
                ).fetchall()
                types: dict[str, str] = dict(
                    historic.execute(
                        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'historic.t'::regclass AND attnum > 0"
                    ).fetchall()
                )
    finally:
        pg.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
    assert rows == [
        (1, "ok", Decimal("1.50"), "(1,x)", ["sad", "ok"], "sad"),
        (2, "sad", Decimal("2.00"), '(2,"y z")', [], "sad"),
        (3, None, None, None, None, "ok"),
    ]
    assert (types["m"], types["c"], types["p"], types["ms"]) == (
        "text",
        "numeric(10,2)",
        "text",
        "text[]",
    )
