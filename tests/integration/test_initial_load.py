"""Initial load: a consistent copy under concurrent writes, resumable after a kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.load.chunkcopy import ChunkCopier
from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step, wait_until
from tests.processes import ITEMS_DDL, ROOT, daemon_env, items, read_clickhouse, slot_caught_up

ROWS = 20_000


def populate(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE SCHEMA director")
    conn.execute(ITEMS_DDL)
    conn.execute("CREATE TABLE director.pairs (a uuid, b text, note text, PRIMARY KEY (a, b))")
    conn.execute(
        "INSERT INTO director.items SELECT g, g % 7, 'v' || g, g / 4.0, g % 3 = 0 "
        f"FROM generate_series(1, {ROWS}) g"
    )
    conn.execute(
        "INSERT INTO director.pairs SELECT gen_random_uuid(), 'k' || g, E'tab\\there' "
        "FROM generate_series(1, 3000) g"
    )


def writer(dsn: str, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            key = rng.randint(1, ROWS + 500)
            roll = rng.random()
            if roll < 0.5:
                conn.execute(
                    "INSERT INTO director.items VALUES (%s, 1, 'new', 1, true) "
                    "ON CONFLICT (id) DO UPDATE SET val = director.items.val || '+', "
                    "amount = director.items.amount + 1",
                    (key,),
                )
            elif roll < 0.8:
                conn.execute("DELETE FROM director.items WHERE id = %s", (key,))
            else:
                conn.execute(
                    "UPDATE director.pairs SET note = %s WHERE b = %s",
                    (f"n{rng.random()}", f"k{rng.randint(1, 3000)}"),
                )


@contextmanager
def killed_then_resumed(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
    slot: str,
    fault: str,
    **settings: str,
) -> Iterator[str]:
    """The daemon run with `CDC_FAULTS=fault` until the fault kills it; the body runs while
    it is down (given the ClickHouse URL); then the daemon runs again until it has caught up
    with the WAL written meanwhile, and stops."""
    env, ch_url = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, slot, **settings)
    env = {**os.environ, **env}
    command = [sys.executable, "-m", "cdc.cli", "run", "--log-format", "json"]
    with (tmp_path / "daemon.log").open("ab") as log:
        killed = subprocess.run(
            command, cwd=ROOT, env={**env, "CDC_FAULTS": fault},
            stdout=log, stderr=subprocess.STDOUT, timeout=120,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL
        yield ch_url
        daemon = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            row = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            wait_until(lambda: slot_caught_up(pg, slot, Lsn.parse(row[0])), 120,
                       "the restarted daemon to finish the load and catch up")  # fmt: skip
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0


def test_initial_load_under_concurrent_writes(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    populate(pg)
    stop = threading.Event()
    writers = [threading.Thread(target=writer, args=(pg_dsn, stop, s)) for s in range(2)]
    for thread in writers:
        thread.start()
    settings = make_settings(
        pg_dsn, clickhouse_server.url, ch_database, backfill_chunk_size=1500, backfill_workers=3
    )
    try:
        time.sleep(0.3)
        with running_daemon(settings, clickhouse_server.client) as running:
            time.sleep(1.0)
            stop.set()
            for thread in writers:
                thread.join()
            wait_in_step(pg, clickhouse_server.client, ch_database, ["items", "pairs"],
                         running=running)  # fmt: skip
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    chunks = pg.execute(
        "SELECT count(*), bool_and(done), count(DISTINCT snapshot_lsn) FROM historic._cdc_backfill"
    ).fetchone()
    assert chunks is not None
    assert chunks[0] > 10 and chunks[1] and chunks[2] == 1
    states = pg.execute("SELECT table_name, state FROM historic._cdc_tables ORDER BY 1").fetchall()
    assert states == [("items", "ready"), ("pairs", "ready")]


def test_a_database_with_short_timeouts_for_its_application_is_loaded_and_streamed(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """Timeouts a DBA sets on the database for its application do not cut the pipeline's
    work short: a load's chunk waits in its snapshot's transaction while others are
    copied, a COPY outlasts the statement timeout; the pipeline lock's session, idle while
    the daemon streams, outlives the idle session timeout (ended, it would release the
    lock to a standby daemon)."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.big (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.big SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
    database = pg.info.dbname
    for setting, value in (("statement_timeout", "50ms"),
                           ("idle_in_transaction_session_timeout", "50ms"),
                           ("idle_session_timeout", "1s")):  # fmt: skip
        pg.execute(f"ALTER DATABASE {database} SET {setting} = '{value}'")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database,
                             backfill_chunk_size=20000, backfill_workers=2)  # fmt: skip
    client = clickhouse_server.client
    lock_holder = ("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                   "AND database = (SELECT oid FROM pg_database WHERE datname = %s)")  # fmt: skip
    with running_daemon(settings, client) as running:
        holder = pg.execute(lock_holder, (database,)).fetchall()
        with psycopg.connect(pg_dsn, autocommit=True) as app:
            app.execute("SET statement_timeout = 0")
            app.execute("UPDATE director.big SET v = 'changed' WHERE id % 100 = 0")
        wait_in_step(pg, client, ch_database, ["big"], running=running)
        time.sleep(1.5)  # longer than the idle session timeout
        pg.execute("DELETE FROM director.big WHERE id % 7 = 0")
        wait_in_step(pg, client, ch_database, ["big"], running=running)
        assert len(holder) == 1
        assert pg.execute(lock_holder, (database,)).fetchall() == holder


def test_killed_load_copies_a_table_cut_short_again_at_one_snapshot(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    populate(pg)
    with killed_then_resumed(
        pg, pg_dsn, clickhouse_server, ch_database, tmp_path, "load_slot",
        "mid_backfill_chunk=kill@8", CDC_BACKFILL_CHUNK_SIZE="1000", CDC_BACKFILL_WORKERS="1",
        CDC_BACKFILL_BATCH_MB="0",
    ) as ch_url:  # fmt: skip
        first = pg.execute(
            "SELECT table_name, chunk, snapshot_lsn::text FROM historic._cdc_backfill WHERE done"
        ).fetchall()
        total = pg.execute("SELECT count(*) FROM historic._cdc_backfill").fetchone()
        assert total is not None
        assert len(first) == 7, "the kill at the 8th chunk left 7 chunks done"
        assert total[0] > len(first)
        pg.execute("UPDATE director.items SET val = 'changed while down' WHERE id <= 100")
    after = pg.execute(
        "SELECT table_name, chunk, snapshot_lsn::text FROM historic._cdc_backfill WHERE done"
    ).fetchall()
    assert len(after) == total[0]
    # A table is copied at one snapshot: the stream replays from the slot's start, and a
    # change there may need a row as the copy of its table found it (a key moved from a
    # range copied later into one copied earlier would find its values nowhere).
    snapshots: dict[str, set[str]] = {}
    for table, _, lsn in after:
        snapshots.setdefault(table, set()).add(lsn)
    assert all(len(lsns) == 1 for lsns in snapshots.values()), snapshots
    cut_short = {table for table, _, _ in first}
    assert all(snapshots[t] != {lsn} for t, _, lsn in first if t in cut_short), (
        "the table cut short was copied again at the resumed snapshot"
    )

    source = items(pg, "director.items")
    historic = items(pg, "historic.items_current")
    assert historic == source
    assert read_clickhouse(ch_url, ch_database)["rows"] == source


def test_a_load_killed_while_planning_continues_its_plan(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    """Chunks are recorded as the plan finds them, while the first are copied; a kill after
    the fifth leaves the plan cut short. The restarted daemon plans and copies that table
    again at its new snapshot (a table is copied at one snapshot): chunks that meet, each
    copied once, every row in both targets."""
    populate(pg)
    with killed_then_resumed(
        pg, pg_dsn, clickhouse_server, ch_database, tmp_path, "plan_slot",
        "mid_backfill_plan=kill@5", CDC_BACKFILL_CHUNK_SIZE="1000", CDC_BACKFILL_WORKERS="1",
    ) as ch_url:  # fmt: skip
        assert pg.execute("SELECT count(*) FROM historic._cdc_backfill").fetchone() == (5,)
        plans = pg.execute("SELECT bool_and(planned) FROM historic._cdc_backfill_plans").fetchone()
        assert plans == (False,)
        first = pg.execute(
            "SELECT table_name, chunk, upper_key FROM historic._cdc_backfill ORDER BY 1, 2"
        ).fetchall()
        # A plan begun again finds other bounds.
        pg.execute("DELETE FROM director.items WHERE id <= 500")
    chunks: dict[str, list[tuple[int, Any, Any, bool]]] = {}
    for table, *chunk in pg.execute(
        "SELECT table_name, chunk, lower_key, upper_key, done FROM historic._cdc_backfill "
        "ORDER BY table_name, chunk"
    ).fetchall():
        chunks.setdefault(table, []).append(tuple(chunk))
    for table, planned in chunks.items():
        assert [c[0] for c in planned] == list(range(len(planned))), table
        assert all(done for *_, done in planned), table
        assert planned[0][1] is None and planned[-1][2] is None, table
        assert [c[1] for c in planned[1:]] == [c[2] for c in planned[:-1]], table
    for table, chunk, upper in first:
        assert chunks[table][chunk][2] != upper, f"{table} chunk {chunk} was not planned again"
    assert len(chunks["pairs"]) == 4
    assert pg.execute("SELECT bool_and(planned) FROM historic._cdc_backfill_plans").fetchone() == (
        True,
    )
    source = items(pg, "director.items")
    assert items(pg, "historic.items_current") == source
    assert read_clickhouse(ch_url, ch_database)["rows"] == source


def test_killed_after_creating_the_slot_still_loads(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    """Killed once the slot exists and before the copy begins: the restarted daemon finds
    the slot, and still copies the rows that were there before it."""
    populate(pg)
    with killed_then_resumed(
        pg, pg_dsn, clickhouse_server, ch_database, tmp_path, "created_slot",
        "after_slot_created=kill",
    ) as ch_url:  # fmt: skip
        # The copy is recorded as due, nothing copied yet.
        plans = "SELECT count(*), bool_or(planned) FROM historic._cdc_backfill_plans"
        assert pg.execute(plans).fetchone() == (2, False)
        pg.execute("UPDATE director.items SET val = 'changed while down' WHERE id <= 100")
    source = items(pg, "director.items")
    assert len(source) == ROWS
    assert items(pg, "historic.items_current") == source
    assert read_clickhouse(ch_url, ch_database)["rows"] == source


def test_initial_load_quarantines_a_table_with_values_clickhouse_cannot_hold(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.events (id int PRIMARY KEY, at timestamptz, note text)")
    pg.execute(
        "INSERT INTO director.events SELECT g, '2024-01-01'::timestamptz + g * interval '1 s', "
        "'n' FROM generate_series(1, 3000) g"
    )
    pg.execute("UPDATE director.events SET at = '1850-06-01' WHERE id = 2500")
    pg.execute("CREATE TABLE director.fine (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.fine SELECT g, 'v' FROM generate_series(1, 100) g")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, backfill_chunk_size=1000)
    with running_daemon(settings, clickhouse_server.client) as running:
        wait_in_step(pg, clickhouse_server.client, ch_database, ["fine"], running=running)
        reason = running.daemon.quarantined[("director", "events")]
    assert "1850-06-01" in reason and "key (2500)" in reason
    done = dict(
        pg.execute(
            "SELECT chunk, done FROM historic._cdc_backfill WHERE table_name = 'events'"
        ).fetchall()
    )
    assert len(done) == 4 and not done[2], "the chunk holding the bad value is not done"
    states = dict(pg.execute("SELECT table_name, state FROM historic._cdc_tables").fetchall())
    assert states == {"events": "quarantined", "fine": "ready"}


def test_a_connection_lost_during_the_initial_load_is_retried_and_the_load_resumes(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server ends a backfill worker's session (as a restarting source does) before its
    first chunk: the daemon retries its setup, resumes the load, and copies every row."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.t SELECT g, 'v' || g FROM generate_series(1, 3000) g")
    cut: list[int] = []
    copy_chunk = ChunkCopier.copy

    def cut_once(self: ChunkCopier, source: psycopg.Connection[Any], *args: Any) -> Any:
        if not cut:
            cut.append(source.info.backend_pid)
            pg.execute("SELECT pg_terminate_backend(%s)", (source.info.backend_pid,))
        return copy_chunk(self, source, *args)

    monkeypatch.setattr(ChunkCopier, "copy", cut_once)
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, backfill_chunk_size=1000)
    with running_daemon(settings, clickhouse_server.client) as running:
        wait_in_step(pg, clickhouse_server.client, ch_database, ["t"], running=running)
    assert len(cut) == 1
    assert pg.execute("SELECT count(*) FROM historic.t").fetchone() == (3000,)
