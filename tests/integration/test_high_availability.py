"""Two daemons for one pipeline: one streams, the other waits and takes over after kill -9."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg

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


def log_has(path: Path, event: str) -> bool:
    return path.exists() and f'"event": "{event}"' in path.read_text()


def test_standby_takes_over_within_seconds(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute(ITEMS_DDL)
    env, ch_url = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, "ha_slot")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    active = start_daemon(env, log_a)
    standby = None
    try:
        wait_until(lambda: log_has(log_a, "replication_started"), 60, "the first daemon")
        standby = start_daemon(env, log_b)
        wait_until(lambda: log_has(log_b, "standby"), 60, "the second daemon to wait")
        for i in range(100):
            pg.execute("INSERT INTO director.items VALUES (%s, 1, 'before', 1)", (i,))
        assert not log_has(log_b, "replication_started"), "two daemons streamed at once"
        active.send_signal(signal.SIGKILL)
        active.wait()
        killed_at = time.monotonic()
        wait_until(lambda: log_has(log_b, "replication_started"), 30, "the standby to take over")
        takeover = time.monotonic() - killed_at
        for i in range(100, 200):
            pg.execute("INSERT INTO director.items VALUES (%s, 2, 'after', 2)", (i,))
        pg.execute("UPDATE director.items SET flag = true WHERE id % 3 = 0")
        row = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        wait_until(lambda: slot_caught_up(pg, "ha_slot", Lsn.parse(row[0])), 60, "catch-up")
    finally:
        for process in (active, standby):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    assert takeover < 10, f"takeover took {takeover:.1f} s"
    source = items(pg, "director.items")
    assert len(source) == 200
    assert read_clickhouse(ch_url, ch_database)["rows"] == source
    historic = pg.execute("SELECT count(*) FROM historic.items_current WHERE flag").fetchone()
    assert historic is not None and historic[0] == sum(1 for r in source if r[4])
