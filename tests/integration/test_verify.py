"""`cdc verify` next to a streaming daemon: agreement, named drift, repair, writes in flight."""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner, Result

from cdc.check import rowhash
from cdc.cli import app
from cdc.load.planning import published_schemas
from cdc.ops.settings import Settings
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.stream.slots import get_slot
from tests.harness import ClickHouseServer
from tests.pipeline import (
    RunningDaemon,
    cli_env,
    make_settings,
    running_daemon,
    wait_in_step,
    wait_until,
)

runner = CliRunner()

CARDS_DDL = """
CREATE TYPE director.mood AS ENUM ('sad', 'ok', 'glad');
CREATE TABLE director.cards (
    id int PRIMARY KEY, big bigint, note text, amount numeric(12,2), ratio numeric,
    at timestamptz, day date, ok bool, ref uuid, doc jsonb, score float8, tags int[],
    local timestamp, small real, span interval, raw bytea, mood director.mood
)"""
CARDS_ROWS = """
INSERT INTO director.cards
SELECT g, g * 1000003::bigint,
       CASE WHEN mod(g, 17) = 0 THEN NULL
            ELSE 'card ' || g || E'\\tcol\\nline \\\\ ü ✓ 日本 ''q''' END,
       CASE WHEN mod(g, 19) = 0 THEN NULL ELSE mod(g, 1000) * 1.25 END,
       g::numeric / 7,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second 7 microseconds',
       date '2020-02-29' + mod(g, 900),
       mod(g, 3) = 0,
       md5(g::text)::uuid,
       jsonb_build_object('g', g, 's', E'x"y\\\\z', 'a', jsonb_build_array(g, null)),
       CASE WHEN mod(g, 11) = 0 THEN 'NaN'::float8 WHEN mod(g, 13) = 0 THEN '-0'::float8
            ELSE g / 3.0 END,
       CASE WHEN mod(g, 5) = 0 THEN NULL ELSE ARRAY[g, NULL, g + 1] END,
       timestamp '1999-12-31 23:59:59.5' + g * interval '1 hour',
       CASE WHEN mod(g, 23) = 0 THEN '-Infinity'::real ELSE g / 7.0 END,
       g * interval '1 day 3 minutes 0.25 seconds',
       decode(md5(g::text), 'hex'),
       (ARRAY['sad', 'ok', 'glad'])[1 + mod(g, 3)]::director.mood
FROM generate_series(%s::int, %s::int) g"""


def verify(settings: Settings, *args: str) -> Result:
    return runner.invoke(app, ["verify", *args], env=cli_env(settings))


def note_lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


@pytest.fixture
def settings(
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    monkeypatch.chdir(tmp_path)  # no .stack/ here: settings come from the environment only
    return make_settings(pg_dsn, clickhouse_server.url, ch_database)


def load_cards(pg: psycopg.Connection[Any], first: int, last: int) -> None:
    pg.execute(CARDS_ROWS, (first, last))


def caught_up(pg: psycopg.Connection[Any], settings: Settings, running: RunningDaemon) -> None:
    """Wait until the daemon has applied everything written so far (`wait_in_step` cannot
    compare these column types in Python: jsonb, arrays stored as [] for NULL, ...)."""
    row = pg.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert row is not None
    target = row[0]

    def done() -> bool:
        assert running.thread.is_alive(), f"the daemon died: {running.error!r}"
        slot = get_slot(pg, settings.slot)
        return slot is not None and (slot.confirmed_flush_lsn or 0) >= Lsn.parse(target)

    wait_until(done, 30, "the daemon to catch up")


def test_verify_agrees_after_a_workload(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    ch = clickhouse_server.client
    pg.execute("CREATE SCHEMA director")
    pg.execute(CARDS_DDL)
    load_cards(pg, 1, 12_000)  # copied by the initial load
    with running_daemon(settings, ch) as running:
        load_cards(pg, 12_001, 22_000)  # streamed
        pg.execute(
            "UPDATE director.cards SET note = note || E'\\r\\n', score = -score WHERE id % 97 = 0"
        )
        pg.execute("DELETE FROM director.cards WHERE id % 89 = 0")
        pg.execute("UPDATE director.cards SET tags = '{}', ratio = 1e30 WHERE id % 83 = 0")
        caught_up(pg, settings, running)
        result = verify(settings, "--range-size", "5000")
    assert result.exit_code == 0, result.output
    assert "1 tables: all agree" in result.output
    title = re.search(r"verify director\.cards: (\d+) ranges, (\d+) source rows", result.output)
    assert title is not None, result.output
    source_rows = pg.execute("SELECT count(*) FROM director.cards").fetchone()
    assert source_rows is not None
    assert int(title[1]) >= 4 and int(title[2]) == source_rows[0]
    assert re.search(
        r"historic\s*│\s*\d+\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*equal", result.output
    )
    assert re.search(
        r"clickhouse\s*│\s*\d+\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*equal", result.output
    )
    assert "not compared" not in result.output  # arrays too: a NULL array as []

    unknown = verify(settings, "nope")
    assert unknown.exit_code == 2
    assert "not in the publication: nope" in unknown.output


def test_verify_names_drift_and_repair_fixes_it(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    ch = clickhouse_server.client
    db = quote_identifier(settings.clickhouse_database)
    pg.execute("CREATE SCHEMA director")
    pg.execute(CARDS_DDL)
    load_cards(pg, 1, 6_000)
    with running_daemon(settings, ch) as running:
        load_cards(pg, 6_001, 8_000)
        caught_up(pg, settings, running)
        pg.execute("DELETE FROM historic.cards WHERE id IN (101, 5102)")
        pg.execute("UPDATE historic.cards SET tags = '{9,9}' WHERE id = 304")
        pg.execute(
            "INSERT INTO historic.cards (id, note, _version, _is_deleted) "
            "VALUES (900001, 'ghost', 1, false)"
        )
        ch.command(
            f"INSERT INTO {db}.cards SELECT * REPLACE ('drifted' AS note, _version + 1 AS "
            f"_version) FROM {db}.cards FINAL WHERE id = 203"
        )
        ch.command(
            f"INSERT INTO {db}.cards (id, note, _version, _is_deleted) "
            "VALUES (900001, 'ghost', 1, 0)"
        )

        found = verify(settings, "--range-size", "3000")
        assert found.exit_code == 1, found.output
        assert note_lines(found.output, "historic ") == [
            "historic missing: (101), (5102)",
            "historic extra: (900001)",
            "historic changed: (304)",
        ], found.output
        assert note_lines(found.output, "clickhouse ") == [
            "clickhouse extra: (900001)",
            "clickhouse changed: (203)",
        ], found.output
        assert "drift found" in found.output

        blind = runner.invoke(
            app, ["verify", "--wait", "1"], env={**cli_env(settings), "CDC_SLOT": "nope"}
        )
        assert blind.exit_code == 1, blind.output
        assert re.search(r"historic .*│\s*unconfirmed\s*│", blind.output), blind.output
        assert "unconfirmed: slot 'nope' does not exist" in blind.output

        repaired = verify(settings, "--range-size", "3000", "--repair")
        assert repaired.exit_code == 0, repaired.output
        assert "after repair director.cards" in repaired.output
        assert "all agree" in repaired.output
        again = verify(settings)
        assert again.exit_code == 0, again.output
        # The ghost is a tombstone now in both targets, the changed row the source's again.
        ghost = pg.execute("SELECT _is_deleted FROM historic.cards WHERE id = 900001").fetchone()
        assert ghost == (True,)
        note = ch.query(f"SELECT note FROM {db}.cards_current WHERE id = 203").result_rows
        assert note == [pg.execute("SELECT note FROM director.cards WHERE id = 203").fetchone()]


@contextmanager
def writing(dsn: str) -> Iterator[threading.Event]:
    """Writers updating, deleting and inserting ids 1..3000 until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    i = rng.randint(1, 3000)
                    conn.execute(
                        "UPDATE director.busy SET n = n + 1, note = md5(random()::text) "
                        "WHERE id = %s",
                        (i,),
                    )
                    if i % 5 == 0:
                        conn.execute("DELETE FROM director.busy WHERE id = %s", (i + 1,))
                        conn.execute(
                            "INSERT INTO director.busy VALUES (%s, 0, 'back') "
                            "ON CONFLICT (id) DO NOTHING",
                            (i + 2,),
                        )
        except BaseException as exc:  # noqa: BLE001 - raised again by the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors


def test_verify_and_repair_during_writes(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    settings: Settings,
    clickhouse_server: ClickHouseServer,
) -> None:
    ch = clickhouse_server.client
    db = quote_identifier(settings.clickhouse_database)
    # Batches wait up to 400 ms: the targets trail the source by that much, so a verify that
    # did not wait for the slot would see the trailing changes as drift.
    settings = settings.model_copy(update={"batch_latency_ms": 400})
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.busy (id int PRIMARY KEY, n int NOT NULL, note text)")
    pg.execute("INSERT INTO director.busy SELECT g, 0, 'start' FROM generate_series(1, 6000) g")
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, settings.clickhouse_database, ["busy"], running=running)
        with writing(pg_dsn):
            calm = verify(settings, "--range-size", "500")
            assert calm.exit_code == 0, calm.output
            assert "all agree" in calm.output

            pg.execute("DELETE FROM historic.busy WHERE id = 4500")  # outside the writers' ids
            drift = verify(settings, "--range-size", "500")
            assert drift.exit_code == 1, drift.output
            assert note_lines(drift.output, "historic ") == ["historic missing: (4500)"], (
                drift.output
            )
            assert note_lines(drift.output, "clickhouse ") == [], drift.output

            # Drift among rows the writers change: the repair copies those pieces while
            # newer versions stream in, and must not undo any of them.
            pg.execute("DELETE FROM historic.busy WHERE id = 1500")
            ch.command(
                f"INSERT INTO {db}.busy SELECT * REPLACE (-1 AS n, _version + 1 AS _version) "
                f"FROM {db}.busy FINAL WHERE id = 2500"
            )
            repaired = verify(settings, "--range-size", "500", "--repair")
            assert repaired.exit_code == 0, repaired.output
            assert "after repair director.busy" in repaired.output
        wait_in_step(pg, ch, settings.clickhouse_database, ["busy"], running=running)
        assert verify(settings).exit_code == 0


# Every element type ClickHouse stores as an Array, with NULL and empty arrays, NULL
# elements, text that needs quoting in an array literal, two dimensions and lower bounds.
LISTS_DDL = """
CREATE TYPE director.mood AS ENUM ('sad', 'ok', 'glad');
CREATE DOMAIN director.cents AS numeric(10,2);
CREATE TABLE director.lists (
    id int PRIMARY KEY, small int2[], ints int[], bigs int8[], oids oid[],
    amounts numeric(10,3)[], ratios numeric[], scores float8[], halves real[], flags bool[],
    refs uuid[], days date[], locals timestamp[], moments timestamptz[], blobs bytea[],
    words text[], names varchar(20)[], docs jsonb[], moods director.mood[],
    spans interval[], boxes box[], grid int[][], cube text[][][], prices director.cents[]
)"""
LISTS_ROWS = """
INSERT INTO director.lists
SELECT g,
       ARRAY[g, -g, NULL]::int2[],
       CASE WHEN mod(g, 4) = 0 THEN NULL WHEN mod(g, 4) = 1 THEN '{}'
            ELSE ARRAY[g, NULL, g + 1] END,
       ARRAY[g * 10000000000, -9223372036854775808],
       ARRAY[g::oid, 4294967295::oid],
       ARRAY[g * 1.5, NULL, 0.000, -1.100]::numeric(10,3)[],
       ARRAY[g::numeric / 7, 1e20, 0.5000],
       ARRAY['NaN'::float8, 'Infinity', '-0', g / 3.0],
       ARRAY['-Infinity'::real, g / 7.0, NULL],
       ARRAY[mod(g, 2) = 0, NULL, true],
       ARRAY[md5(g::text)::uuid, NULL],
       ARRAY[date '2020-02-29' + g, NULL],
       ARRAY[timestamp '1999-12-31 23:59:59.5' + g * interval '1 hour 1 microsecond', NULL],
       ARRAY[timestamptz '2024-01-01 00:00:00+05' + g * interval '7 microseconds', NULL],
       ARRAY[decode(md5(g::text), 'hex'), NULL, '\\x'::bytea, '\\x5c2227'::bytea],
       CASE WHEN mod(g, 5) = 0 THEN NULL
            ELSE ARRAY['a,b', 'q"uote', 'back\\slash', E'tab\\tnl\\n', '{brace}', 'NULL', '',
                       NULL, ' spaced ', 'ü ✓ 日本', 'it''s', 'w' || g] END,
       ARRAY['v' || g, NULL]::varchar(20)[],
       ARRAY[jsonb_build_object('g', g, 's', E'x"y\\\\z'), NULL],
       ARRAY['sad', NULL, 'glad']::director.mood[],
       ARRAY[g * interval '1 day 3 minutes 0.25 seconds', NULL],
       ARRAY[box '((1,2),(3,4))', NULL],
       CASE WHEN mod(g, 3) = 0 THEN '{}' ELSE ARRAY[[g, NULL], [3, 4], [5, g]] END,
       ARRAY[[['a', NULL], ['c,d', '}']], [['', 'f'], ['g', 'h' || g]]],
       ARRAY[g * 0.25, NULL]::director.cents[]
FROM generate_series(%s::int, %s::int) g"""
ARRAY_COLUMNS = ("small", "ints", "bigs", "oids", "amounts", "ratios", "scores", "halves",
                 "flags", "refs", "days", "locals", "moments", "blobs", "words", "names", "docs",
                 "moods", "spans", "boxes", "grid", "cube", "prices")  # fmt: skip


def held_texts_agree(
    pg: psycopg.Connection[Any], ch: Any, database: str, schema: TableSchema
) -> None:
    """Each array column's text as ClickHouse holds it, computed in the source and read
    from ClickHouse, is the same for every row (the row hashes then agree too)."""
    for name in ARRAY_COLUMNS:
        column = schema.column(name)
        query = sql.SQL("SELECT id, {} FROM director.lists").format(rowhash.pg_held_text(column))
        source = dict(pg.execute(query).fetchall())
        held = dict(
            ch.query(
                f"SELECT id, {rowhash.ch_text(column)} FROM "
                f"{quote_identifier(database)}.lists_current"
            ).result_rows
        )
        assert held == source, name


def test_verify_compares_arrays_in_clickhouse(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    ch = clickhouse_server.client
    db = quote_identifier(settings.clickhouse_database)
    pg.execute("CREATE SCHEMA director")
    pg.execute(LISTS_DDL)
    pg.execute(LISTS_ROWS, (1, 300))  # copied by the initial load
    with running_daemon(settings, ch) as running:
        pg.execute(LISTS_ROWS, (301, 600))  # streamed
        pg.execute("UPDATE director.lists SET words = '{}', grid = NULL WHERE id % 7 = 0")
        pg.execute("UPDATE director.lists SET ints = '[0:1]={8,9}' WHERE id = 11")
        caught_up(pg, settings, running)
        (schema,) = published_schemas(pg, settings.publication, ["lists"])
        held_texts_agree(pg, ch, settings.clickhouse_database, schema)

        agree = verify(settings, "--range-size", "250")
        assert agree.exit_code == 0, agree.output
        assert "1 tables: all agree" in agree.output
        assert "not compared" not in agree.output
        # ClickHouse holds NULL arrays as []: only the historic comparison tells them apart.
        ch_empty = ch.query(f"SELECT count() FROM {db}.lists_current WHERE empty(words)")
        pg_empty = pg.execute("SELECT count(*) FROM director.lists WHERE words = '{}'")
        assert ch_empty.result_rows[0][0] > (pg_empty.fetchone() or (0,))[0]

        # One element each, behind the daemon's back.
        tampered = {
            204: "arrayMap((x, i) -> if(i = 8, '', x), words, arrayEnumerate(words)) AS words",
            205: "arrayMap((x, i) -> if(i = 3, CAST([5, 206] AS Array(Nullable(Int32))), x), "
            "grid, arrayEnumerate(grid)) AS grid",
            206: "arrayMap(x -> addMicroseconds(x, 1), moments) AS moments",
            208: "CAST([false, NULL, true] AS Array(Nullable(Bool))) AS flags",
            402: "arrayPopBack(ratios) AS ratios",
        }
        for key, replaced in tampered.items():
            ch.command(
                f"INSERT INTO {db}.lists SELECT * REPLACE ({replaced}, _version + 1 AS _version) "
                f"FROM {db}.lists FINAL WHERE id = {key}"
            )
        pg.execute("UPDATE historic.lists SET words[3] = 'back/slash' WHERE id = 101")
        pg.execute("UPDATE historic.lists SET words = '{}' WHERE id = 110")  # NULL at the source
        pg.execute("UPDATE historic.lists SET cube[2][2][2] = 'h' WHERE id = 107")
        found = verify(settings, "--range-size", "250")
        assert found.exit_code == 1, found.output
        assert note_lines(found.output, "historic ") == ["historic changed: (101), (107), (110)"], (
            found.output
        )
        assert note_lines(found.output, "clickhouse ") == [
            "clickhouse changed: (204), (205), (206), (208), (402)"
        ], found.output


def test_infinite_dates_and_timestamps_are_the_ends_of_clickhouse_range(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    """ClickHouse has no infinity: a date's or timestamp's `infinity` and `-infinity`, copied
    or streamed, alone or in arrays, are held as the last and first moment of its range (the
    table is not set aside), and verify compares them so: equal, and a changed one found."""
    ch = clickhouse_server.client
    db = quote_identifier(settings.clickhouse_database)
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.spans (id int PRIMARY KEY, d date, ts timestamp, "
               "tstz timestamptz, days date[], moments timestamptz[])")  # fmt: skip
    rows = """INSERT INTO director.spans VALUES
        (%s, 'infinity', '-infinity', 'infinity', '{infinity,2024-01-01,NULL}', NULL),
        (%s, '-infinity', 'infinity', '-infinity', NULL, '{-infinity,infinity}'),
        (%s, '2024-02-29', '2024-02-29 12:00:00', '2024-02-29 12:00:00+02', '{}', '{}')"""
    pg.execute(rows, (1, 2, 3))  # copied by the initial load
    with running_daemon(settings, ch) as running:
        pg.execute(rows, (4, 5, 6))  # streamed
        pg.execute("UPDATE director.spans SET tstz = 'infinity' WHERE id = 6")
        caught_up(pg, settings, running)
        assert running.daemon.quarantined == {}
        (schema,) = published_schemas(pg, settings.publication, ["spans"])
        for name in ("d", "ts", "tstz", "days", "moments"):
            column = schema.column(name)
            present = "IS NOT NULL" if name in ("d", "ts", "tstz") else "IS NULL OR true"
            query = sql.SQL("SELECT id, {} FROM director.spans WHERE {} {}").format(
                rowhash.pg_held_text(column), sql.Identifier(name), sql.SQL(present)
            )
            source = dict(pg.execute(query).fetchall())
            held = dict(ch.query(
                f"SELECT id, {rowhash.ch_text(column)} FROM {db}.spans_current "
                f"WHERE {quote_identifier(name)} {present}").result_rows)  # fmt: skip
            assert held == source, name
        stored = ch.query(
            f"SELECT id, toString(d), toString(ts), toString(tstz), toString(moments) "
            f"FROM {db}.spans_current WHERE id IN (1, 5) ORDER BY id"
        ).result_rows
        assert stored == [
            (1, "2299-12-31", "1900-01-01 00:00:00.000000", "2299-12-31 23:59:59.999999", "[]"),
            (5, "1900-01-01", "2299-12-31 23:59:59.999999", "1900-01-01 00:00:00.000000",
             "['1900-01-01 00:00:00.000000','2299-12-31 23:59:59.999999']"),
        ]  # fmt: skip
        agree = verify(settings)
        assert agree.exit_code == 0, agree.output
        ch.command(
            f"INSERT INTO {db}.spans SELECT * REPLACE (toDate32('2299-12-30') AS d, "
            f"_version + 1 AS _version) FROM {db}.spans FINAL WHERE id = 4"
        )
        found = verify(settings)
        assert found.exit_code == 1, found.output
        assert note_lines(found.output, "clickhouse ") == ["clickhouse changed: (4)"], found.output


def test_columns_added_with_a_default_hold_it_in_earlier_rows(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    """`ADD COLUMN ... DEFAULT <constant>` streams nothing for the rows already there, yet
    they read the default at the source (Postgres' missing value): so do the targets' rows,
    those written by earlier batches and those of the batch the change falls into."""
    ch = clickhouse_server.client
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.cards (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.cards SELECT g, 'copied' FROM generate_series(1, 20) g")
    with running_daemon(settings, ch) as running:
        pg.execute("INSERT INTO director.cards VALUES (21, 'streamed')")
        caught_up(pg, settings, running)
        with pg.transaction():  # in the batch of the change, before it
            pg.execute("INSERT INTO director.cards VALUES (22, 'same batch')")
            pg.execute(
                "ALTER TABLE director.cards ADD COLUMN active boolean NOT NULL DEFAULT true, "
                "ADD COLUMN score numeric(6,2) DEFAULT 7.5, ADD COLUMN note text, "
                "ADD COLUMN label text DEFAULT E'it''s a\\ttab', "
                "ADD COLUMN seen timestamptz DEFAULT '2024-01-01 10:00+02', "
                "ADD COLUMN tags text[] DEFAULT '{a,NULL,\"b c\"}', "
                "ADD COLUMN raw bytea DEFAULT '\\x00ff'"
            )
            pg.execute("INSERT INTO director.cards (id, v, active) VALUES (23, 'after', false)")
        pg.execute("UPDATE director.cards SET score = 1 WHERE id = 2")
        caught_up(pg, settings, running)
        agree = verify(settings)
        assert agree.exit_code == 0, agree.output
        held = ch.query(
            "SELECT id, active, score, note, label, toString(seen), tags, hex(raw) FROM "
            f"{quote_identifier(settings.clickhouse_database)}.cards_current "
            "WHERE id IN (1, 21, 22) ORDER BY id"
        ).result_rows
    expected = (True, Decimal("7.50"), None, "it's a\ttab", "2024-01-01 08:00:00.000000",
                ["a", None, "b c"], "00FF")  # fmt: skip
    assert [row[1:] for row in held] == [expected] * 3
    row = pg.execute("SELECT active, score, label FROM historic.cards_current WHERE id = 22")
    assert row.fetchone() == (True, Decimal("7.50"), "it's a\ttab")


def test_a_table_that_cannot_be_compared_is_named_and_the_others_are_compared(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    """A type change the daemon does not follow (date to timestamp) sets the table aside
    (its ClickHouse table keeps Date32, which the source's hash expression cannot read):
    that table is not compared but reported with the daemon's reason and the way out, the
    others are still compared, and verify exits 2."""
    ch = clickhouse_server.client
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.days (id int PRIMARY KEY, d date)")
    pg.execute("CREATE TABLE director.other (id int PRIMARY KEY, v text)")
    pg.execute(
        "INSERT INTO director.days SELECT g, date '2024-01-01' + g FROM generate_series(1, 50) g"
    )
    pg.execute("INSERT INTO director.other SELECT g, 'v' FROM generate_series(1, 50) g")
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, settings.clickhouse_database, ["days", "other"], running=running)
        pg.execute("ALTER TABLE director.days ALTER d TYPE timestamp")
        pg.execute("UPDATE director.days SET d = d + interval '1 hour' WHERE id = 1")
        pg.execute("INSERT INTO director.other VALUES (51, 'after')")
        caught_up(pg, settings, running)
        result = verify(settings)
        as_json = verify(settings, "--json")
    assert result.exit_code == 2, result.output
    assert "2 tables: 1 could not be compared" in result.output, result.output
    errors = note_lines(result.output, "error: ")
    assert len(errors) == 1 and "set aside by the daemon" in errors[0], result.output
    assert "director.days changed type" in errors[0] and "cdc rebuild" in errors[0]
    assert re.search(r"verify director\.other: 1 ranges, 51 source rows", result.output)
    assert as_json.exit_code == 2
    documents = {d["table"]: d for d in json.loads(as_json.stdout)["tables"]}
    assert documents["director.other"]["clean"] and documents["director.other"]["error"] is None
    assert documents["director.days"]["error"] and not documents["director.days"]["clean"]
