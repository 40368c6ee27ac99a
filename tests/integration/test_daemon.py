"""The daemon end to end: racing writers, TOAST, key changes, truncate, schema changes."""

from __future__ import annotations

import random
import threading
import uuid
from typing import Any

import psycopg
import pytest

from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer
from tests.pipeline import (
    clickhouse_rows,
    director_rows,
    historic_rows,
    make_settings,
    running_daemon,
    wait_in_step,
    wait_until,
)

SCORECARDS = """
CREATE SCHEMA director;
CREATE TABLE director.scorecards (
    id uuid PRIMARY KEY, agent_id int NOT NULL, status text NOT NULL DEFAULT 'draft',
    total_score numeric, notes text, updated_at timestamptz NOT NULL DEFAULT now(),
    submitted_at timestamptz);
CREATE TABLE director.scores (
    scorecard_id uuid NOT NULL, criterion_id int NOT NULL, score numeric(6,2),
    comment text, PRIMARY KEY (scorecard_id, criterion_id));
"""


@pytest.fixture
def director(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pg.execute(SCORECARDS)
    return pg


def racing_writer(dsn: str, ids: list[uuid.UUID], seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(rounds):
            card = rng.choice(ids)
            action = rng.random()
            try:
                with conn.transaction():
                    if action < 0.35:
                        conn.execute(
                            "UPDATE director.scorecards SET notes = %s, updated_at = now(), "
                            "total_score = %s WHERE id = %s",
                            (f"edit {rng.random()} ✓", rng.randint(0, 100), card),
                        )
                    elif action < 0.55:
                        conn.execute(
                            "INSERT INTO director.scores VALUES (%s, %s, %s, %s) "
                            "ON CONFLICT (scorecard_id, criterion_id) DO UPDATE "
                            "SET score = excluded.score, comment = excluded.comment",
                            (card, rng.randint(1, 4), rng.randint(0, 500) / 100, "c"),
                        )
                    elif action < 0.75:
                        conn.execute(
                            "UPDATE director.scorecards SET status = 'submitted', "
                            "submitted_at = now(), updated_at = now() WHERE id = %s",
                            (card,),
                        )
                    elif action < 0.88:
                        conn.execute("DELETE FROM director.scores WHERE scorecard_id = %s", (card,))
                        conn.execute("DELETE FROM director.scorecards WHERE id = %s", (card,))
                    else:
                        conn.execute(
                            "INSERT INTO director.scorecards (id, agent_id) VALUES (%s, %s) "
                            "ON CONFLICT (id) DO UPDATE SET status = 'draft', "
                            "submitted_at = NULL",
                            (card, rng.randint(1, 9)),
                        )
            except psycopg.errors.ForeignKeyViolation:
                pass


def test_racing_writers_leave_all_three_stores_equal(
    director: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    ids = [uuid.uuid4() for _ in range(15)]
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, batch_size=200)
    with running_daemon(settings, clickhouse_server.client):
        writers = [
            threading.Thread(target=racing_writer, args=(pg_dsn, ids, seed, 150))
            for seed in range(6)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        # The race may end with every scorecard deleted or back to draft: one more submit.
        director.execute(
            "INSERT INTO director.scorecards (id, agent_id, status, submitted_at) "
            "VALUES (%s, 1, 'submitted', now())",
            (uuid.uuid4(),),
        )
        wait_in_step(director, clickhouse_server.client, ch_database, ["scorecards", "scores"])
    submitted = director.execute(
        "SELECT count(*) FROM director.scorecards WHERE status = 'submitted'"
    ).fetchone()
    assert submitted is not None and submitted[0] > 0
    versions = director.execute(
        "SELECT count(*), count(DISTINCT _version) FROM historic.scorecards"
    ).fetchone()
    assert versions is not None and versions[0] == versions[1]


def test_toast_key_change_truncate_and_schema_changes(
    director: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    ch = clickhouse_server.client
    big = director.execute(
        "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g"
    ).fetchone()
    assert big is not None
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, ch):
        a, b = uuid.uuid4(), uuid.uuid4()
        director.execute(
            "INSERT INTO director.scorecards (id, agent_id, notes) VALUES (%s, 1, %s), "
            "(%s, 2, 'short')",
            (a, big[0], b),
        )
        tables = ["scorecards", "scores"]
        wait_in_step(director, ch, ch_database, tables)
        # TOAST: the 128 kB note is not resent when another column changes.
        director.execute("UPDATE director.scorecards SET status = 'submitted' WHERE id = %s", (a,))
        wait_in_step(director, ch, ch_database, tables)
        notes = director.execute(
            "SELECT length(notes) FROM historic.scorecards_current WHERE id = %s", (a,)
        ).fetchone()
        assert notes == (128000,)

        # Primary-key change: the old key disappears from both targets.
        c = uuid.uuid4()
        director.execute("UPDATE director.scorecards SET id = %s WHERE id = %s", (c, b))
        director.execute("INSERT INTO director.scores VALUES (%s, 1, 1.5, 'x')", (c,))
        wait_in_step(director, ch, ch_database, tables)

        # TRUNCATE, then new rows: only the new rows survive.
        director.execute("TRUNCATE director.scores")
        director.execute("INSERT INTO director.scores VALUES (%s, 7, 2.25, 'after')", (a,))
        wait_in_step(director, ch, ch_database, tables)
        assert len(historic_rows(director, "scores")) == 1

        # A column added at the source appears in both targets before rows use it.
        director.execute("ALTER TABLE director.scorecards ADD COLUMN reviewer_id int")
        director.execute("UPDATE director.scorecards SET reviewer_id = 42 WHERE id = %s", (a,))
        wait_in_step(director, ch, ch_database, tables)
        # A dropped column stays in the targets, nullable; the views keep working.
        director.execute("ALTER TABLE director.scorecards DROP COLUMN submitted_at")
        director.execute("INSERT INTO director.scorecards (id, agent_id) VALUES (%s, 3)", (b,))
        wait_until(
            lambda: len(clickhouse_rows(ch, ch_database, "scorecards")) == 3,
            what="row inserted after the column drop",
        )
        rows = director.execute(
            "SELECT submitted_at FROM historic.scorecards_current WHERE id = %s", (b,)
        ).fetchall()
        assert rows == [(None,)]


def test_table_without_primary_key_is_left_out_while_others_flow(
    director: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    director.execute("CREATE TABLE director.audit_log (line text)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, clickhouse_server.client):
        director.execute("INSERT INTO director.audit_log VALUES ('no key')")
        director.execute(
            "INSERT INTO director.scorecards (id, agent_id) VALUES (%s, 1)", (uuid.uuid4(),)
        )
        wait_in_step(director, clickhouse_server.client, ch_database, ["scorecards"])
        # Not published, so the application's own writes to it keep working.
        director.execute("UPDATE director.audit_log SET line = 'edited'")
        director.execute("DELETE FROM director.audit_log")
    published = director.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'cdc_pub' ORDER BY 1"
    ).fetchall()
    assert published == [("scorecards",), ("scores",)]


def test_large_streamed_transaction_and_edge_values(
    director: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    director.execute(
        "CREATE TABLE director.edges (id int PRIMARY KEY, f float8, t text, ts timestamptz, "
        "d date, n numeric(12,4))"
    )
    from psycopg.conninfo import make_conninfo

    streaming_dsn = make_conninfo(pg_dsn, options="-c logical_decoding_work_mem=64kB")
    settings = make_settings(streaming_dsn, clickhouse_server.url, ch_database, memory_budget_mb=1)
    with running_daemon(settings, clickhouse_server.client) as running:
        director.execute(
            "INSERT INTO director.edges VALUES "
            "(1, 'NaN', 'ünïcödé ✓ 🎉 e\u0301', '1900-01-01 00:00:00+00', '1900-01-01', 0),"
            "(2, 'Infinity', E'tab\\there\\nnewline \\\\ back', "
            "'2299-12-31 23:59:59.999999+00', '2299-12-31', 99999999.9999),"
            "(3, '-Infinity', '', '2024-02-29 12:00:00+05:30', '2024-02-29', -0.0001),"
            "(4, -0.0, NULL, NULL, NULL, NULL)"
        )
        director.execute(
            "INSERT INTO director.scorecards (id, agent_id, notes) "
            "SELECT gen_random_uuid(), g, repeat('x', 100) FROM generate_series(1, 20000) g"
        )
        wait_in_step(
            director,
            clickhouse_server.client,
            ch_database,
            ["edges", "scorecards"],
            timeout=120,
            running=running,
        )
    assert len(director_rows(director, "director", "scorecards")) == 20000


def test_a_column_that_loses_not_null_holds_nulls_in_both_targets(
    director: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, ch) as running:
        a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        director.execute("INSERT INTO director.scorecards (id, agent_id) VALUES (%s, 1)", (a,))
        wait_in_step(director, ch, ch_database, ["scorecards"], running=running)

        # DROP NOT NULL at the source: NULLs arrive, and must not become 0 or ''.
        director.execute("ALTER TABLE director.scorecards ALTER COLUMN agent_id DROP NOT NULL")
        director.execute("INSERT INTO director.scorecards (id, agent_id) VALUES (%s, NULL)", (b,))
        wait_in_step(director, ch, ch_database, ["scorecards"], running=running)

        # A dropped NOT NULL column: rows written after it hold NULL there, in both targets.
        director.execute("ALTER TABLE director.scorecards DROP COLUMN status")
        director.execute("INSERT INTO director.scorecards (id, agent_id) VALUES (%s, 3)", (c,))
        wait_until(
            lambda: len(clickhouse_rows(ch, ch_database, "scorecards")) == 3,
            what="the row inserted after the column drop",
        )
        # The dropped column is in neither `_current` view: read the tables.
        query = f"SELECT id, agent_id, status FROM {ch_database}.scorecards FINAL"
        in_clickhouse = {row[0]: row[1:] for row in ch.query(query).result_rows}
        in_historic = {
            row[0]: row[1:]
            for row in director.execute(
                "SELECT id, agent_id, status FROM historic.scorecards WHERE NOT _is_deleted"
            ).fetchall()
        }
    expected = {a: (1, "draft"), b: (None, "draft"), c: (3, None)}
    assert in_historic == expected
    assert in_clickhouse == expected


class LateStop(threading.Event):
    """A stop request whose first read after `set()` does not see it, and every later one
    does: as when a signal lands between two reads of one turn of the daemon's loop."""

    def __init__(self) -> None:
        super().__init__()
        self._unseen = 0

    def set(self) -> None:
        self._unseen = 1
        super().set()

    def is_set(self) -> bool:
        if self._unseen:
            self._unseen = 0
            return False
        return super().is_set()


def test_a_stop_leaves_the_slot_flushed_past_every_batch_applied(
    director: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """A stop that arrives while a batch is being applied: the daemon drains it and
    acknowledges it before it closes the stream, whichever read of its loop sees the stop
    first, so the slot is flushed past everything the targets hold."""
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    stop = LateStop()
    with running_daemon(settings, clickhouse_server.client, stop) as running:
        daemon = running.daemon
        with director.transaction():
            director.execute(
                "INSERT INTO director.scorecards (id, agent_id, notes) "
                "SELECT gen_random_uuid(), g, repeat('n', 200) FROM generate_series(1, 60000) g"
            )  # its commit ends after `end`
            end = Lsn.parse(lsn_text(director, "SELECT pg_current_wal_insert_lsn()::text"))

        def sent() -> bool:  # the transaction is on its way, and not yet in both targets
            sent_lsn = lsn_text(director, "SELECT sent_lsn::text FROM pg_stat_replication")
            return Lsn.parse(sent_lsn) > end and daemon.stats.applied_lsn < end

        wait_until(sent, what="the transaction sent and not yet applied")
        stop.set()
        running.thread.join(timeout=30)
    confirmed = lsn_text(
        director,
        f"SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
        f"WHERE slot_name = '{settings.slot}'",
    )
    assert daemon.stats.changes == 60000
    assert Lsn.parse(confirmed) >= daemon.stats.applied_lsn >= end


def lsn_text(conn: psycopg.Connection[Any], query: str) -> str:
    row = conn.execute(query).fetchone()
    assert row is not None and row[0] is not None, query
    return str(row[0])


def test_columns_added_after_a_drop_or_beside_a_generated_one_keep_the_view(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """A column added after another was dropped, or next to one the stream never carries
    (generated, which neither the copy nor the stream brings), is added to historic's
    `_current` view after every column the table has: the view was made again from the
    stream's columns only, which Postgres refuses (a view keeps its columns), and the
    daemon stopped. A renamed column's rows are copied again under the new name."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.cols (id int PRIMARY KEY, v text, s text, "
               "g int GENERATED ALWAYS AS (id * 2) STORED)")  # fmt: skip
    pg.execute("INSERT INTO director.cols (id, v, s) VALUES (1, 'a', 'x')")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0.3)

    def held(count: int) -> bool:
        assert running.error is None, running.error
        row = pg.execute("SELECT count(*) FROM historic.cols_current").fetchone()
        return row is not None and row[0] == count and len(
            clickhouse_rows(ch, ch_database, "cols")) == count  # fmt: skip

    with running_daemon(settings, ch) as running:
        wait_until(lambda: held(1), what="the initial load")
        pg.execute("ALTER TABLE director.cols DROP COLUMN s")
        pg.execute("INSERT INTO director.cols (id, v) VALUES (2, 'b')")
        wait_until(lambda: held(2), what="the row after the drop")
        pg.execute("ALTER TABLE director.cols ADD COLUMN z int DEFAULT 7")
        pg.execute("INSERT INTO director.cols (id, v) VALUES (3, 'c')")
        pg.execute("ALTER TABLE director.cols RENAME COLUMN v TO w")
        pg.execute("INSERT INTO director.cols (id, w) VALUES (4, 'd')")
        wait_until(lambda: held(4), what="the rows after the added and renamed columns")
        wait_in_step(pg, ch, ch_database, ["cols"], running=running)
    view = [r[0] for r in pg.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'historic' "
        "AND table_name = 'cols_current' ORDER BY ordinal_position").fetchall()]  # fmt: skip
    assert view[:2] == ["id", "v"] and {"s", "z", "w"} <= set(view[2:]), view
    in_clickhouse = ch.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'cols'",
        parameters={"db": ch_database},
    ).result_rows
    assert "g" not in view and ("g",) not in in_clickhouse, in_clickhouse  # fmt: skip
    rows = pg.execute("SELECT id, v, z, w FROM historic.cols_current ORDER BY id").fetchall()
    # z's default is what rows 1 and 2 hold at the source too (Postgres' missing value);
    # v keeps what it held when it was renamed.
    assert rows == [(1, "a", 7, "a"), (2, "b", 7, "b"), (3, "c", 7, "c"),
                    (4, None, 7, "d")]  # fmt: skip
