"""The whole source schema, followed: tables Postgres would refuse to update while published
stay out of the publication of every change (those without a key are append-only logs in a
publication of inserts and truncates), partitioned tables arrive under their root, and tables
created or partitions attached while the daemon runs are copied and streamed without a
restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs
from typer.testing import CliRunner

from cdc.cli import app
from tests.harness import ClickHouseServer
from tests.pipeline import (
    cli_env,
    director_rows,
    historic_rows,
    make_settings,
    running_daemon,
    source_columns,
    wait_in_step,
    wait_until,
)
from tests.processes import ROOT, daemon_env, start_daemon

runner = CliRunner()

KINDS = """
CREATE SCHEMA director;
CREATE TABLE director.keyed (id int PRIMARY KEY, v text);
CREATE TABLE director.nokey (v text);
CREATE TABLE director.silent (id int PRIMARY KEY, v text);
ALTER TABLE director.silent REPLICA IDENTITY NOTHING;
CREATE TABLE director.full_identity (v text);
ALTER TABLE director.full_identity REPLICA IDENTITY FULL;
CREATE TABLE director.by_index (id int NOT NULL, v text);
CREATE UNIQUE INDEX by_index_id ON director.by_index (id);
ALTER TABLE director.by_index REPLICA IDENTITY USING INDEX by_index_id;
CREATE UNLOGGED TABLE director.scratch (id int PRIMARY KEY, v text);
CREATE TABLE director.parted (id int, day int, v text, PRIMARY KEY (id, day))
    PARTITION BY RANGE (day);
CREATE TABLE director.parted_a PARTITION OF director.parted FOR VALUES FROM (0) TO (10);
CREATE TABLE director.parted_nokey (day int, v text) PARTITION BY RANGE (day);
CREATE TABLE director.parted_nokey_a PARTITION OF director.parted_nokey
    FOR VALUES FROM (0) TO (10);
"""
ALL_TABLES = ["keyed", "nokey", "silent", "full_identity", "by_index", "scratch", "parted",
              "parted_a", "parted_nokey", "parted_nokey_a"]  # fmt: skip


def assert_writable(pg: psycopg.Connection[Any], tables: list[str]) -> None:
    """The application's UPDATE and DELETE still work on every table."""
    for table in tables:
        pg.execute(f"UPDATE director.{table} SET v = v || '!'")
        pg.execute(f"DELETE FROM director.{table} WHERE v = 'gone'")


def published(pg: psycopg.Connection[Any], publication: str) -> list[str]:
    rows = pg.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1",
        (publication,),
    ).fetchall()
    return [r[0] for r in rows]


def test_the_source_is_never_changed_in_behaviour(
    pg: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pg.execute(KINDS)
    env = {"CDC_SOURCE_DSN": pg_dsn, "CDC_PUBLICATION": "cli_pub", "COLUMNS": "250"}
    created = runner.invoke(app, ["publication", "create"], env=env)
    assert created.exit_code == 0, created.output
    # FULL is publishable (Postgres can identify rows); the partitioned table by its root.
    assert published(pg, "cli_pub") == ["by_index", "full_identity", "keyed", "parted"]
    row = pg.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = 'cli_pub'").fetchone()
    assert row == (True,)
    # Tables without a usable identity: append-only logs, in a publication of inserts and
    # truncates only.
    assert published(pg, "cli_pub_append") == ["nokey", "silent"]
    row = pg.execute("SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication "
                     "WHERE pubname = 'cli_pub_append'").fetchone()  # fmt: skip
    assert row == (True, False, False, True)
    assert "created publication cli_pub_append" in created.output
    assert "not published: director.nokey" not in created.output
    assert "ALTER TABLE director.scratch SET LOGGED" in created.output
    assert "director.parted_nokey_a have no usable replica identity" in created.output
    assert_writable(pg, ALL_TABLES)
    # Taken out and added again: to the append publication.
    dropped = runner.invoke(app, ["publication", "drop-table", "nokey"], env=env)
    assert dropped.exit_code == 0, dropped.output
    assert "nokey" not in published(pg, "cli_pub_append")
    added = runner.invoke(app, ["publication", "add-table", "nokey"], env=env)
    assert added.exit_code == 0, added.output
    assert "nokey" in published(pg, "cli_pub_append") and "nokey" not in published(pg, "cli_pub")
    shown = runner.invoke(app, ["publication", "show", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert {"schema": "director", "table": "nokey"} in json.loads(shown.output)[
        "append_only_tables"
    ]
    assert_writable(pg, ALL_TABLES)
    # An identity fixed makes the table publishable with its updates and deletes.
    pg.execute("ALTER TABLE director.silent REPLICA IDENTITY DEFAULT")
    added = runner.invoke(app, ["publication", "add-table", "silent"], env=env)
    assert added.exit_code == 0, added.output
    assert "silent" in published(pg, "cli_pub") and "silent" not in published(pg, "cli_pub_append")
    assert_writable(pg, ALL_TABLES)


EVENTS = """
CREATE SCHEMA director;
CREATE TABLE director.events (id int, day int, v text, PRIMARY KEY (id, day))
    PARTITION BY RANGE (day);
CREATE TABLE director.events_1 PARTITION OF director.events FOR VALUES FROM (0) TO (10);
CREATE TABLE director.events_2 PARTITION OF director.events FOR VALUES FROM (10) TO (20);
INSERT INTO director.events SELECT i, i % 20, 'v' || i FROM generate_series(1, 200) i;
"""


def target_tables(pg: psycopg.Connection[Any]) -> list[str]:
    rows = pg.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'historic' "
        "AND tablename NOT LIKE '\\_cdc%' ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def test_partitioned_table_arrives_under_its_root(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    pg.execute(EVENTS)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with running_daemon(settings, ch) as running:
        # The initial load copied both partitions under the root.
        wait_in_step(pg, ch, ch_database, ["events"], running=running)
        # Rows moved between partitions stay one row each.
        pg.execute("UPDATE director.events SET day = day + 10, v = 'moved' WHERE day < 5")
        pg.execute("UPDATE director.events SET day = day - 10 WHERE day >= 15")
        # A partition created while running, and one attached with rows already in it.
        pg.execute("CREATE TABLE director.events_3 PARTITION OF director.events "
                   "FOR VALUES FROM (20) TO (30)")  # fmt: skip
        pg.execute("INSERT INTO director.events SELECT i, 20 + i % 10, 'new' "
                   "FROM generate_series(201, 250) i")  # fmt: skip
        with pg.transaction():
            pg.execute("CREATE TABLE director.events_4 (LIKE director.events INCLUDING ALL)")
            pg.execute("INSERT INTO director.events_4 SELECT i, 30 + i % 10, 'attached' "
                       "FROM generate_series(251, 300) i")  # fmt: skip
            pg.execute("ALTER TABLE director.events ATTACH PARTITION director.events_4 "
                       "FOR VALUES FROM (30) TO (40)")  # fmt: skip
        pg.execute("UPDATE director.events SET day = 35, v = 'into 4' WHERE id <= 20")
        pg.execute("DELETE FROM director.events WHERE id BETWEEN 21 AND 30")
        wait_in_step(pg, ch, ch_database, ["events"], running=running)
    assert target_tables(pg) == ["events"]
    row = ch.query(f"SELECT count(), uniqExact(id) FROM `{ch_database}`.events FINAL "
                   "WHERE _is_deleted = 0").result_rows  # fmt: skip
    assert row == [(290, 290)]


def test_partitions_detached_or_dropped_leave_the_targets_too(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A retention job detaches, drops or truncates old partitions: their rows leave the
    table with no change streamed, and the targets kept them. The table is copied whole, replacing
    what its targets hold; also when it happened while the daemon was stopped, as a partition
    attached then is copied over it."""
    pg.execute(EVENTS)
    pg.execute("CREATE TABLE director.events_3 PARTITION OF director.events "
               "FOR VALUES FROM (20) TO (30)")  # fmt: skip
    pg.execute("INSERT INTO director.events SELECT i, 20 + i % 10, 'v' FROM "
               "generate_series(201, 260) i")  # fmt: skip
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["events"], running=running)
        pg.execute("ALTER TABLE director.events DETACH PARTITION director.events_1")
        pg.execute("UPDATE director.events SET v = 'after' WHERE id % 7 = 0")
        wait_in_step(pg, ch, ch_database, ["events", "events_1"], running=running)
        pg.execute("TRUNCATE director.events_3")  # pgoutput sends it only as the root's
        wait_in_step(pg, ch, ch_database, ["events", "events_1"], running=running)
        wait_until(lambda: pg.execute("SELECT shape FROM historic._cdc_followed WHERE "
                                      "table_name = 'events'").fetchone() != (None,),
                   what="the shapes to be recorded")  # fmt: skip
    assert any(e["event"] == "table_copied_again" and "partitions" in e["reason"] for e in logs)
    pg.execute("DROP TABLE director.events_2")
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["events", "events_1"], running=running)
    count = pg.execute("SELECT count(*) FROM director.events").fetchone()
    assert count == (0,)
    pg.execute("INSERT INTO director.events SELECT i, 20 + i % 10, 'w' FROM "
               "generate_series(1, 10) i")  # fmt: skip
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["events", "events_1"], running=running)
    # A table loaded elsewhere, attached as a partition while the daemon was stopped: its
    # rows were never streamed as the root's.
    pg.execute("CREATE TABLE director.events_9 (LIKE director.events)")
    pg.execute("INSERT INTO director.events_9 SELECT i, 90 + i % 10, 'loaded' FROM "
               "generate_series(901, 950) i")  # fmt: skip
    pg.execute("ALTER TABLE director.events ATTACH PARTITION director.events_9 "
               "FOR VALUES FROM (90) TO (100)")  # fmt: skip
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["events", "events_1"], running=running)


def test_a_table_with_inheritance_children_holds_its_own_rows_only(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """Table inheritance (not partitioning): a SELECT of the parent returns its children's
    rows too, but the stream sends each child's changes as the child's. The parent's copy
    took its children's rows, which its targets then kept as they were, and verify read
    them as the parent's. Each table now holds, and is compared on, its own rows."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.city (id int PRIMARY KEY, name text)")
    pg.execute("CREATE TABLE director.capital (state text, PRIMARY KEY (id)) "
               "INHERITS (director.city)")  # fmt: skip
    pg.execute("INSERT INTO director.city SELECT g, 'c' FROM generate_series(1, 50) g")
    pg.execute("INSERT INTO director.capital SELECT g, 'cap', 's' FROM generate_series(101, 110) g")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, ch):
        pg.execute("UPDATE director.capital SET name = 'moved' WHERE id = 101")
        pg.execute("DELETE FROM director.capital WHERE id = 102")
        pg.execute("UPDATE director.city SET name = 'x' WHERE id = 1")

        def own_rows(table: str) -> list[tuple[Any, ...]]:
            return pg.execute(sql.SQL("SELECT id, name FROM ONLY {} ORDER BY id").format(
                sql.Identifier("director", table))).fetchall()  # fmt: skip

        def held(table: str) -> list[tuple[Any, ...]]:
            return pg.execute(sql.SQL("SELECT id, name FROM {} ORDER BY id").format(
                sql.Identifier("historic", f"{table}_current"))).fetchall()  # fmt: skip

        wait_until(lambda: all(held(t) == own_rows(t) for t in ("city", "capital")),
                   what="each table's own rows")  # fmt: skip
        result = CliRunner().invoke(app, ["verify", "--json"], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    documents = {d["table"]: d for d in json.loads(result.stdout)["tables"]}
    assert documents["director.city"]["source_rows"] == 50


def test_old_publication_is_migrated_and_no_longer_blocks_writes(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    pg.execute(EVENTS)
    pg.execute("CREATE TABLE director.log (v text)")
    pg.execute("INSERT INTO director.log VALUES ('a')")
    # As an older version made it: every table, partitioned ones through their leaves.
    pg.execute("CREATE PUBLICATION cdc_pub FOR TABLE director.log, director.events_1, "
               "director.events_2")  # fmt: skip
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        pg.execute("INSERT INTO director.events VALUES (500, 1, 'late')")
        wait_in_step(pg, ch, ch_database, ["events"], running=running)
        assert_writable(pg, ["log", "events"])
    events = {e["event"]: e for e in logs}
    assert events["publication_via_root"]["table"] == "cdc_pub"
    assert "ADD PRIMARY KEY" in events["publication_table_removed"]["detail"]
    assert events["publication_table_removed"]["table"] == "director.log"
    assert published(pg, "cdc_pub") == ["events"]


def test_table_created_while_running_is_copied_then_streamed(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.first (id int PRIMARY KEY)")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        with pg.transaction():
            pg.execute("CREATE TABLE director.late (id int PRIMARY KEY, v text)")
            pg.execute("INSERT INTO director.late SELECT i, 'before' "
                       "FROM generate_series(1, 500) i")  # fmt: skip
        wait_until(lambda: "late" in published(pg, "cdc_pub"), what="the table to be published")
        pg.execute("INSERT INTO director.late SELECT i, 'after' FROM generate_series(501, 600) i")
        pg.execute("UPDATE director.late SET v = 'changed' WHERE id % 7 = 0")
        pg.execute("DELETE FROM director.late WHERE id % 11 = 0")
        wait_in_step(pg, ch, ch_database, ["late"], running=running)
        # A name that leaves no room for `_current` in Postgres' 63 bytes.
        long = "scorecard_revision_comment_attachment_thumbnail_versions"  # 56 bytes
        pg.execute(f"CREATE TABLE director.{long} (id int PRIMARY KEY, v text)")
        pg.execute(f"INSERT INTO director.{long} VALUES (1, 'copied')")
        wait_until(lambda: long in published(pg, "cdc_pub"), what="the long name published")
        pg.execute(f"INSERT INTO director.{long} VALUES (2, 'streamed')")
        wait_in_step(pg, ch, ch_database, ["late", long], running=running)
        # A keyless table created later is replicated as an append-only log; its updates
        # still work at the source, and are said once not to be replicated.
        pg.execute("CREATE TABLE director.notes (v text)")
        wait_until(lambda: "notes" in published(pg, "cdc_pub_append"), what="the log published")
        pg.execute("INSERT INTO director.notes VALUES ('a'), ('a')")
        pg.execute("UPDATE director.notes SET v = 'x'")
        wait_until(lambda: any(e["event"] == "append_only_changes_not_replicated" for e in logs),
                   what="the updates to be reported")  # fmt: skip
        pg.execute("DROP TABLE director.late")
        wait_until(lambda: any(e["event"] == "table_dropped" for e in logs),
                   what="the drop to be logged")  # fmt: skip
    said = [e for e in logs if e["event"] == "append_only_changes_not_replicated"]
    assert [e["table"] for e in said] == ["director.notes"]  # once
    assert "ALTER TABLE director.notes ADD PRIMARY KEY (...)" in said[0]["fix"]
    assert not any(e["event"] == "table_excluded" for e in logs)
    dropped = next(e for e in logs if e["event"] == "table_dropped")
    assert dropped["table"] == "director.late"
    row = pg.execute("SELECT count(*) FROM historic.late_current").fetchone()
    assert row is not None and row[0] > 500  # the targets are kept
    assert published(pg, "cdc_pub") == ["first", long]


def test_changes_that_need_a_copied_value_wait_for_the_copy(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """An update that leaves a TOASTed value alone, made after the snapshot of a new
    table's copy and streamed before the copy lands, waits for the copy: the value is in
    no other place, and the row, newer than the copy, would keep a NULL over it. While it
    waits, the reader keeps its replication session alive (the server ends one it has not
    heard from for `wal_sender_timeout`)."""
    pg.execute(sql.SQL("ALTER DATABASE {} SET wal_sender_timeout = '1s'").format(
        sql.Identifier(pg.info.dbname)))  # fmt: skip
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.first (id int PRIMARY KEY)")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with (
        capture_logs() as logs,
        running_daemon(settings, ch) as running,
        psycopg.connect(pg_dsn) as older,  # holds the copy's snapshot back until it ends
        psycopg.connect(pg_dsn) as reader,  # holds the copy's writes back until it ends
    ):
        older.execute("SELECT pg_current_xact_id()")
        with pg.transaction():
            pg.execute("CREATE TABLE director.notes (id int PRIMARY KEY, n int, body text)")
            pg.execute("ALTER TABLE director.notes ALTER body SET STORAGE EXTERNAL")
            pg.execute("INSERT INTO director.notes SELECT i, 0, "
                       "(SELECT string_agg(md5(i::text || j::text), '') "
                       "FROM generate_series(1, 100) j) FROM generate_series(1, 20) i")  # fmt: skip
        wait_until(lambda: "notes" in published(pg, "cdc_pub"), what="the table to be published")
        pg.execute("INSERT INTO director.notes VALUES (0, 1, 'streamed before the copy')")
        wait_until(partial(streamed, pg, "notes", 1), what="the stream to know the table")
        reader.execute("LOCK TABLE historic.notes IN SHARE MODE")
        older.commit()
        wait_until(lambda: any(e["event"] == "table_load_started" for e in logs),
                   what="the copy's snapshot")  # fmt: skip
        pg.execute("UPDATE director.notes SET n = n + 1")
        wait_until(lambda: any(e["event"] in ("changes_wait_for_copy", "unchanged_values_unknown")
                               for e in logs), what="the update to reach the stages")  # fmt: skip
        for i in range(8):  # batches behind it fill the applier: the reader cannot read
            pg.execute("INSERT INTO director.first VALUES (%s)", (i,))
            time.sleep(0.5)
        reader.commit()
        wait_in_step(pg, ch, ch_database, ["notes"], running=running)
    assert not any(e["event"] in ("unchanged_values_unknown", "source_connection_lost")
                   for e in logs)  # fmt: skip
    waited = [e for e in logs if e["event"] == "changes_wait_for_copy"]
    assert [(e["table"], e["rows"]) for e in waited] == [("director.notes", 20)]
    rows = pg.execute("SELECT count(*) FROM historic.notes_current WHERE n = 1 AND "
                      "length(body) = 3200").fetchone()  # fmt: skip
    assert rows == (20,)


def test_a_table_made_again_before_the_first_snapshot_is_picked_up_as_new(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A table made again under its name (renamed away, made like it, filled, the old one
    dropped) after the daemon's first look but before the slot's snapshot is not in the
    publication at the snapshot: it is not copied as if it were streamed, but picked up as
    a new table, published, copied whole, and streamed."""
    pg.execute("CREATE SCHEMA director")
    keyed_tables(pg, schema=False, cards=50, other=5)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    older = psycopg.connect(pg_dsn)  # holds the slot's snapshot back until it ends
    older.execute("SELECT pg_current_xact_id()")

    def rebuild_while_the_slot_waits() -> None:
        with older, psycopg.connect(pg_dsn, autocommit=True) as app:
            wait_until(lambda: app.execute("SELECT 1 FROM pg_replication_slots WHERE "
                                           "slot_name = %s", (settings.slot,)).fetchone()
                       is not None, what="the slot's creation to start")  # fmt: skip
            with app.transaction():
                app.execute("ALTER TABLE director.cards RENAME TO cards_old")
                app.execute("CREATE TABLE director.cards (LIKE director.cards_old INCLUDING ALL)")
                app.execute("INSERT INTO director.cards SELECT * FROM director.cards_old")
                app.execute("DROP TABLE director.cards_old")
            older.commit()

    rebuilder = threading.Thread(target=rebuild_while_the_slot_waits)
    rebuilder.start()
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        rebuilder.join()
        wait_until(lambda: "cards" in published(pg, "cdc_pub"), what="the table to be published")
        pg.execute("UPDATE director.cards SET v = 'changed' WHERE id % 3 = 0")
        pg.execute("DELETE FROM director.cards WHERE id % 5 = 0")
        pg.execute("INSERT INTO director.cards VALUES (100, 'new')")
        wait_in_step(pg, ch, ch_database, ["cards", "other"], running=running)
    left = [e["table"] for e in logs if e["event"] == "table_left_publication"]
    assert left == ["director.cards"]
    assert [e["table"] for e in logs if e["event"] == "table_added"] == ["director.cards"]


def streamed(pg: psycopg.Connection[Any], table: str, rows: int) -> bool:
    return len(historic_rows(pg, table)) == rows


def test_a_table_locked_by_a_migration_waits_without_stopping_the_stream(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """Adding a table to the publication waits for the locks of the application's
    transactions on it: the daemon tries again at each look instead of waiting, so the
    other tables stream meanwhile."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.busy (id int PRIMARY KEY, v text)")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        with psycopg.connect(pg_dsn) as migration:
            migration.execute("CREATE TABLE director.late (id int PRIMARY KEY, v text)")
            migration.execute("INSERT INTO director.late VALUES (1, 'before')")
            migration.commit()
            migration.execute("LOCK TABLE director.late IN ACCESS EXCLUSIVE MODE")
            wait_until(lambda: any(e["event"] == "publication_change_waiting" for e in logs),
                       what="the daemon to find the table locked")  # fmt: skip
            for i in range(1, 4):
                pg.execute("INSERT INTO director.busy VALUES (%s, 'while locked')", (i,))
                wait_until(partial(streamed, pg, "busy", i), timeout=10,
                           what="the other tables to stream while it is locked")  # fmt: skip
            assert "late" not in published(pg, "cdc_pub")
            migration.rollback()
        wait_until(lambda: "late" in published(pg, "cdc_pub"), what="the table to be published")
        pg.execute("INSERT INTO director.late VALUES (2, 'after')")
        wait_in_step(pg, ch, ch_database, ["busy", "late"], running=running)
    waiting = [e for e in logs if e["event"] == "publication_change_waiting"]
    assert [(e["table"], e["change"]) for e in waiting] == [("director.late", "add table")]


def keyed_tables(pg: psycopg.Connection[Any], schema: bool = True, **rows: int) -> None:
    """`director.<name> (id int PRIMARY KEY, v text)` with ids 1..rows each (and the schema,
    unless `schema` is false)."""
    if schema:
        pg.execute("CREATE SCHEMA director")
    for name, count in rows.items():
        table = sql.Identifier("director", name)
        pg.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(table))
        pg.execute(sql.SQL("INSERT INTO {} SELECT g, 'old' FROM generate_series(1, %s) g")
                   .format(table), (count,))  # fmt: skip


def test_renamed_and_recreated_tables_arrive_whole_under_their_new_names(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A renamed table was streamed under its new name without its existing rows, and a
    table dropped and made again under the same name (one migration, between two looks at
    the schema) was never published, while the targets kept the old table's rows. Now a
    name that stood for another table is copied whole, replacing what its targets held."""
    keyed_tables(pg, orders=300, lines=50, swap=20)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["orders", "lines", "swap"], running=running)
        pg.execute("ALTER TABLE director.orders RENAME TO orders_2026")
        pg.execute("UPDATE director.orders_2026 SET v = 'renamed' WHERE id % 10 = 0")
        with pg.transaction():  # a migration made of a drop and a create
            pg.execute("DROP TABLE director.lines")
            pg.execute("CREATE TABLE director.lines (id int PRIMARY KEY, v text)")
            pg.execute("INSERT INTO director.lines SELECT g, 'new' FROM generate_series(40, 60) g")
        with pg.transaction():  # names swapped: each name now stands for the other table
            pg.execute("ALTER TABLE director.swap RENAME TO swap_old")
            pg.execute("ALTER TABLE director.orders_2026 RENAME TO swap")
            pg.execute("ALTER TABLE director.swap_old RENAME TO orders_2026")
        pg.execute("INSERT INTO director.swap VALUES (1000, 'after')")
        pg.execute("INSERT INTO director.lines VALUES (1000, 'after')")
        wait_in_step(pg, ch, ch_database, ["swap", "orders_2026", "lines"], running=running)
    renamed = {e["table"] for e in logs if e["event"] == "table_renamed"}
    assert "director.orders" in renamed, [e for e in logs if e["event"].startswith("table_")]
    assert set(published(pg, "cdc_pub")) >= {"swap", "orders_2026", "lines"}


def test_tables_renamed_or_made_again_while_the_daemon_is_stopped_arrive_whole(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A deploy that stops the daemon, migrates, and starts it again: the names the last run
    followed are recorded with their tables' OIDs, so a table renamed meanwhile is copied
    under its new name, and one dropped and made again is published again (it looked like
    a table taken out by hand, and was left out without a word)."""
    keyed_tables(pg, orders=100, lines=50)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["orders", "lines"], running=running)
        wait_until(lambda: pg.execute("SELECT count(*) FROM historic._cdc_followed").fetchone()
                   == (2,), what="the followed tables to be recorded")  # fmt: skip
    pg.execute("ALTER TABLE director.orders RENAME TO orders_2026")
    pg.execute("DROP TABLE director.lines")
    pg.execute("CREATE TABLE director.lines (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.lines SELECT g, 'new' FROM generate_series(40, 60) g")
    with running_daemon(settings, ch) as running:
        pg.execute("UPDATE director.orders_2026 SET v = 'after' WHERE id % 10 = 0")
        wait_in_step(pg, ch, ch_database, ["orders_2026", "lines"], running=running)
    assert set(published(pg, "cdc_pub")) == {"orders_2026", "lines"}


def test_columns_renamed_made_again_or_rewritten_arrive_with_the_source_values(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """Changes of a table's columns that change its rows with no change streamed for them:
    a column renamed (the rows from before held their values under the old name only), a
    column dropped and added again under its name, at a later look (they held the old
    values), a rewrite by
    ALTER COLUMN TYPE ... USING and by ADD COLUMN with a volatile DEFAULT (values no change
    carries); an enum label renamed (ClickHouse holds its text). Each table is copied
    again, while running and while the daemon is stopped."""
    keyed_tables(pg, renamed=120, remade=80, rewritten=60, stopped=40)
    pg.execute("ALTER TABLE director.rewritten ADD COLUMN n int")
    pg.execute("UPDATE director.rewritten SET n = id")
    pg.execute("CREATE TYPE director.mood AS ENUM ('sad', 'ok')")
    pg.execute("CREATE TABLE director.moods (id int PRIMARY KEY, m director.mood)")
    pg.execute("INSERT INTO director.moods SELECT g, 'sad' FROM generate_series(1, 9) g")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    tables = ["renamed", "remade", "rewritten", "stopped", "moods"]
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, tables, running=running)
        pg.execute("ALTER TABLE director.renamed RENAME COLUMN v TO note")
        pg.execute("UPDATE director.renamed SET note = 'after' WHERE id % 10 = 0")
        pg.execute("ALTER TABLE director.remade DROP COLUMN v")
        time.sleep(1)  # added again at a later look than the one that saw it dropped
        pg.execute("ALTER TABLE director.remade ADD COLUMN v text DEFAULT 'remade'")
        pg.execute("ALTER TABLE director.rewritten ALTER COLUMN n TYPE bigint USING n * 1000")
        pg.execute("ALTER TABLE director.rewritten ADD COLUMN u text DEFAULT md5(random()::text)")
        pg.execute("INSERT INTO director.rewritten (id, v) VALUES (1000, 'after')")
        pg.execute("ALTER TYPE director.mood ADD VALUE 'happy'")  # no row changes
        pg.execute("ALTER TYPE director.mood RENAME VALUE 'sad' TO 'blue'")
        wait_in_step(pg, ch, ch_database, tables, running=running)
        wait_until(lambda: pg.execute("SELECT shape FROM historic._cdc_followed WHERE "
                                      "table_name = 'renamed'").fetchone() != (None,),
                   what="the shapes to be recorded")  # fmt: skip
    again = {e["table"]: e["reason"] for e in logs if e["event"] == "table_copied_again"}
    assert again == {
        "director.renamed": "column v renamed to note",
        "director.remade": "column v dropped and added again",
        "director.rewritten": "the table was rewritten with columns added or retyped",
        "director.moods": "enum labels renamed: sad",
    }
    pg.execute("ALTER TABLE director.stopped RENAME COLUMN v TO w")
    pg.execute("ALTER TYPE director.mood RENAME VALUE 'ok' TO 'fine'")
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, tables, running=running)


def test_status_shows_every_table_of_the_schema_with_its_state(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.keyed (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE director.gone (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE director.nokey (v text)")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    env = {"CDC_SOURCE_DSN": pg_dsn, "CDC_SLOT": settings.slot,
           "CDC_PUBLICATION": settings.publication}  # fmt: skip
    with running_daemon(settings, ch):
        pg.execute("DROP TABLE director.gone")
        wait_until(lambda: pg.execute("SELECT 1 FROM historic._cdc_tables WHERE "
                                      "table_name = 'gone' AND state = 'dropped'").fetchone()
                   is not None, what="the drop to be recorded")  # fmt: skip
        result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    states = {t["table"]: (t["state"], t["error"]) for t in document["tables"]}
    assert states["keyed"] == ("streaming", None)
    assert states["gone"][0] == "dropped"
    assert states["nokey"][0] == "streaming"
    logs = {t["table"] for t in document["tables"] if t["append_only"]}
    assert logs == {"nokey"}
    assert document["excluded"] == []


def test_a_table_taken_out_by_hand_stays_out(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.kept (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE director.out (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, initial_load=False,
                             schema_poll_interval_s=0.2)  # fmt: skip
    with capture_logs() as logs, running_daemon(settings, clickhouse_server.client):
        pg.execute("ALTER PUBLICATION cdc_pub DROP TABLE director.out")
        pg.execute("CREATE TABLE director.other (id int PRIMARY KEY)")
        wait_until(lambda: "other" in published(pg, "cdc_pub"), what="the new table")
        time.sleep(0.5)  # more looks at the schema
    assert published(pg, "cdc_pub") == ["kept", "other"]
    assert [e["table"] for e in logs if e["event"] == "table_added"] == ["director.other"]


def test_backfill_of_a_partitioned_table_copies_every_partition(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    pg.execute(EVENTS)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    env = cli_env(settings)
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["events"], running=running)
        pg.execute("DELETE FROM historic.events WHERE day IN (3, 13)")  # in both partitions
        ch.command(f"DELETE FROM `{ch_database}`.events WHERE day IN (3, 13)")
        result = runner.invoke(app, ["backfill", "events"], env=env)
        assert result.exit_code == 0, result.output
        wait_in_step(pg, ch, ch_database, ["events"], running=running)


def test_a_copy_the_daemon_was_killed_before_is_made_at_its_next_start(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path,
) -> None:  # fmt: skip
    """The copies the schema follower queues (a table copied again, a new table) wait in
    memory: a daemon killed before one began forgot it, and the table was then left
    without its rows for good (the names and shapes were already recorded as seen). The
    copy is recorded as due first, so the next start makes it, replacing what the targets
    hold if it was to."""
    keyed_tables(pg, orders=200)
    env, _ = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, "follow_kill",
                             CDC_SCHEMA_POLL_INTERVAL_S="0.3")  # fmt: skip
    log = tmp_path / "daemon.log"

    def historic_in_step(*tables: str) -> bool:
        for table in tables:
            columns = source_columns(pg, "director", table)
            try:
                held = historic_rows(pg, table, columns=columns)
            except psycopg.Error:
                return False
            if held != director_rows(pg, "director", table, columns):
                return False
        return True

    def run_until(check: Callable[[], bool]) -> None:
        daemon = start_daemon(env, log)
        try:
            wait_until(check, 60, "the targets to hold the source's rows")
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, log.read_text()[-3000:]

    def killed_after(change: Callable[[], object]) -> None:
        daemon = start_daemon(env, log, faults="before_table_load=kill")
        try:
            wait_until(lambda: historic_in_step("orders"), 60, "the daemon to stream")
            change()
            assert daemon.wait(timeout=60) == -signal.SIGKILL, log.read_text()[-3000:]
        finally:
            if daemon.poll() is None:
                daemon.kill()

    run_until(lambda: historic_in_step("orders"))
    killed_after(lambda: pg.execute("ALTER TABLE director.orders RENAME COLUMN v TO note"))
    run_until(lambda: historic_in_step("orders"))
    killed_after(lambda: keyed_tables(pg, later=50, schema=False))
    run_until(lambda: historic_in_step("orders", "later"))
    # Made again under its name: the copy due replaces what the targets hold (rows 51-200
    # of the table before), also when the next start resumes it with the other tables.

    def made_again() -> None:
        pg.execute("DROP TABLE director.orders")
        keyed_tables(pg, orders=50, schema=False)

    killed_after(made_again)
    run_until(lambda: historic_in_step("orders", "later"))
    verify = subprocess.run([sys.executable, "-m", "cdc.cli", "verify"], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "2 tables: all agree" in verify.stdout


def test_rows_a_partition_lost_before_a_resumed_initial_load_stay_out(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path,
) -> None:  # fmt: skip
    """A daemon killed right after making its slot resumes the initial load at its next
    start, at a newer snapshot; the stream replays from the slot's. Rows changed in
    between and then gone with no change streamed for them (a partition truncated by
    itself, one detached) are replayed: the resumed copy replaces what the targets held,
    so they fall below its truncate watermark instead of staying for good."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.events (id int, day int, v text, PRIMARY KEY (id, day)) "
               "PARTITION BY RANGE (day)")  # fmt: skip
    for leaf, low in (("events_a", 0), ("events_b", 10), ("events_c", 20)):
        pg.execute(f"CREATE TABLE director.{leaf} PARTITION OF director.events "
                   f"FOR VALUES FROM ({low}) TO ({low + 10})")  # fmt: skip
    pg.execute("INSERT INTO director.events SELECT g, g % 30, 'old' FROM generate_series(1, 90) g")
    env, _ = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, "resume_kill")
    log = tmp_path / "daemon.log"
    daemon = start_daemon(env, log, faults="after_slot_created=kill")
    assert daemon.wait(timeout=60) == -signal.SIGKILL, log.read_text()[-3000:]
    pg.execute("INSERT INTO director.events VALUES (100, 1, 'replayed, then truncated')")
    pg.execute("UPDATE director.events SET v = 'replayed, then detached' WHERE day = 12")
    pg.execute("TRUNCATE director.events_a")
    pg.execute("ALTER TABLE director.events DETACH PARTITION director.events_b")
    pg.execute("UPDATE director.events SET v = 'streamed' WHERE day = 25")
    daemon = start_daemon(env, log)
    try:
        wait_until(lambda: historic_rows(pg, "events", columns=["id", "day", "v"])
                   == director_rows(pg, "director", "events", ["id", "day", "v"]), 60,
                   "historic to hold the source's rows")  # fmt: skip
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-3000:]
    verify = subprocess.run([sys.executable, "-m", "cdc.cli", "verify"], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "initial_load_resumed" in log.read_text()


def test_a_table_that_loses_its_key_and_gets_it_back_arrives_whole(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A migration drops a table's primary key, a later one adds it back. Keyless, it
    leaves the publication (the application's UPDATE and DELETE keep working) and is not
    replicated: its targets are keyed by its key, an append-only log needs its own. With
    its key back it was left set aside for good; it is picked up again and copied whole,
    the deletes made meanwhile included."""
    keyed_tables(pg, t=100)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["t"], running=running)
        pg.execute("ALTER TABLE director.t DROP CONSTRAINT t_pkey")
        wait_until(lambda: any(e["event"] == "table_excluded" for e in logs),
                   what="the keyless table to be excluded")  # fmt: skip
        assert_writable(pg, ["t"])
        pg.execute("DELETE FROM director.t WHERE id % 3 = 0")  # not streamed
        pg.execute("ALTER TABLE director.t ADD PRIMARY KEY (id)")
        pg.execute("UPDATE director.t SET v = 'after' WHERE id % 5 = 0")
        wait_in_step(pg, ch, ch_database, ["t"], running=running)
        assert running.daemon.quarantined == {}
    excluded = next(e for e in logs if e["event"] == "table_excluded")
    assert "until its key is back" in excluded["reason"] and "cdc rebuild t" in excluded["fix"]
    assert "t" not in published(pg, "cdc_pub_append")
