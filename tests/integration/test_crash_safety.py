"""Invariant 5: `kill -9` at any moment loses nothing and never moves a row back in time.

The daemon runs as a separate process and is killed repeatedly while writers keep going:
at random moments, and once between the historic write and the ClickHouse write (a fault
point). After a last clean run, director, historic and ClickHouse hold the same rows, and
both targets agree on every row's version.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer
from tests.pipeline import wait_until
from tests.processes import (
    ITEMS_DDL,
    daemon_env,
    items,
    read_clickhouse,
    slot_caught_up,
    start_daemon,
)

KILLS = 6


def writer(dsn: str, seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            key = rng.randint(1, 60)
            roll = rng.random()
            with conn.transaction():
                if roll < 0.5:
                    conn.execute(
                        "INSERT INTO director.items VALUES (%s, %s, %s, %s) ON CONFLICT (id) "
                        "DO UPDATE SET grp = excluded.grp, val = excluded.val, "
                        "amount = director.items.amount + 1",
                        (key, rng.randint(1, 5), f"v{rng.random():.6f}", rng.randint(0, 999)),
                    )
                elif roll < 0.7:
                    conn.execute("DELETE FROM director.items WHERE id = %s", (key,))
                else:
                    conn.execute(
                        "UPDATE director.items SET flag = NOT flag, val = val || '.' "
                        "WHERE grp = %s",
                        (rng.randint(1, 5),),
                    )
            time.sleep(rng.random() * 0.01)


@pytest.mark.slow
def test_flush_only_what_is_durable_everywhere(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute(ITEMS_DDL)
    env, ch_url = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, "crash_slot")
    log = tmp_path / "daemon.log"
    stop = threading.Event()
    writers = [threading.Thread(target=writer, args=(pg_dsn, s, stop)) for s in range(3)]
    for thread in writers:
        thread.start()
    rng = random.Random(11)
    kills = 0
    try:
        for round_ in range(KILLS):
            # One round dies at the fault point between the historic and ClickHouse writes.
            faults = "after_historic=kill@3" if round_ == 2 else ""
            daemon = start_daemon(env, log, faults)
            if faults:
                assert daemon.wait(timeout=60) == -signal.SIGKILL, log.read_text()[-2000:]
            else:
                time.sleep(rng.uniform(1.0, 3.0))
                assert daemon.poll() is None, log.read_text()[-3000:]
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
            kills += 1
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    row = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    target = Lsn.parse(row[0])
    final = start_daemon(env, log)
    try:
        wait_until(lambda: slot_caught_up(pg, "crash_slot", target), 120, "the daemon to catch up")
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert kills == KILLS
    assert b"injected" not in log.read_bytes()  # the kill fault fires before any message

    source = items(pg, "director.items")
    historic = items(pg, "historic.items_current")
    historic_versions = {
        str(r[0]): str(r[1])
        for r in pg.execute("SELECT id, _version FROM historic.items").fetchall()
    }
    clickhouse = read_clickhouse(ch_url, ch_database)
    assert len(source) > 10
    assert historic == source
    assert clickhouse["rows"] == source
    assert clickhouse["versions"] == historic_versions
