"""Chaos: a long random workload while the daemon is killed at every fault point and at
random moments, the source Postgres is restarted, and ClickHouse fails for a while. At the
end director, historic and ClickHouse hold the same rows and agree on every version."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer, PgServer
from tests.pipeline import wait_until
from tests.processes import (
    ITEMS_DDL,
    daemon_env,
    items,
    read_clickhouse,
    slot_caught_up,
    start_daemon,
)

# (fault spec, how the round ends): every fault point, a ClickHouse outage, random kills.
ROUNDS = [
    ("mid_backfill_chunk=kill@3", "killed"),  # first: the initial load runs only at the start
    ("before_historic=kill@4", "killed"),
    ("after_historic=kill@3", "killed"),
    ("before_clickhouse=kill@5", "killed"),
    ("after_clickhouse=kill@2", "killed"),
    ("before_ack=kill@3", "killed"),
    ("after_ack=kill@4", "killed"),
    ("before_clickhouse=raise*6", "random kill"),
    ("", "random kill"),
    ("", "source restart"),
    ("", "random kill"),
]


def writer(dsn: str, seed: int, stop: threading.Event, committed: list[int]) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    key = rng.randint(1, 400)
                    with conn.transaction():
                        roll = rng.random()
                        if roll < 0.55:
                            conn.execute(
                                "INSERT INTO director.items VALUES (%s, %s, %s, %s) "
                                "ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, "
                                "val = excluded.val, amount = director.items.amount + 1",
                                (key, rng.randint(1, 5), f"v{rng.random():.6f}", key),
                            )
                        elif roll < 0.75:
                            conn.execute("DELETE FROM director.items WHERE id = %s", (key,))
                        elif roll < 0.97:
                            conn.execute(
                                "UPDATE director.items SET flag = NOT flag WHERE grp = %s",
                                (rng.randint(1, 5),),
                            )
                        else:
                            conn.execute(
                                "UPDATE director.items SET id = id + 100000 WHERE id = %s "
                                "AND NOT EXISTS (SELECT 1 FROM director.items WHERE id = %s)",
                                (key, key + 100000),
                            )
                    committed[0] += 1
                    time.sleep(rng.random() * 0.004)
        except psycopg.OperationalError:
            time.sleep(0.5)  # the source is restarting
        except psycopg.errors.IntegrityError:
            continue  # two writers raced for one key; the next transaction goes on


def _survive_rounds(pg_server: PgServer, env: dict[str, str], log: Path) -> dict[str, int]:
    """Run the daemon through every round of `ROUNDS`; how many of each fault it survived."""
    rng = random.Random(5)
    survived: dict[str, int] = {}
    for spec, ending in ROUNDS:
        daemon = start_daemon(env, log, spec)
        if ending == "killed":
            code = daemon.wait(timeout=120)
            assert code == -signal.SIGKILL, f"{spec}: exit {code}\n{log.read_text()[-3000:]}"
        else:
            if ending == "source restart" and pg_server.restart is not None:
                time.sleep(rng.uniform(1.0, 2.0))
                pg_server.restart()
                time.sleep(rng.uniform(2.0, 3.0))
            else:
                time.sleep(rng.uniform(1.0, 2.5))
            assert daemon.poll() is None, log.read_text()[-3000:]
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
        label = spec.split("=")[0] if spec else ending
        survived[label] = survived.get(label, 0) + 1
    return survived


@pytest.mark.slow
def test_chaos(
    pg_server: PgServer,
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA director")
        conn.execute(ITEMS_DDL)
        conn.execute(
            "INSERT INTO director.items SELECT g, g % 5, 'seed', g FROM generate_series(1, 3000) g"
        )
    env, ch_url = daemon_env(
        pg_dsn, clickhouse_server, ch_database, tmp_path, "chaos_slot",
        CDC_BATCH_LATENCY_MS="20", CDC_BACKFILL_CHUNK_SIZE="250", CDC_BACKFILL_WORKERS="1",
        CDC_MAX_RETRY_DELAY_S="0.3",
    )  # fmt: skip
    log = tmp_path / "daemon.log"
    stop = threading.Event()
    committed = [0]
    writers = [threading.Thread(target=writer, args=(pg_dsn, s, stop, committed))
               for s in range(3)]  # fmt: skip
    for thread in writers:
        thread.start()
    try:
        survived = _survive_rounds(pg_server, env, log)
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        row = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        final = start_daemon(env, log)
        try:
            wait_until(lambda: slot_caught_up(pg, "chaos_slot", Lsn.parse(row[0])), 180,
                       "the daemon to catch up after the chaos")  # fmt: skip
        finally:
            final.send_signal(signal.SIGTERM)
            assert final.wait(timeout=60) == 0, log.read_text()[-3000:]
        source = items(pg, "director.items")
        historic = items(pg, "historic.items_current")
        historic_versions = {
            str(r[0]): str(r[1]) for r in pg.execute("SELECT id, _version FROM historic.items")
        }
    print(f"\nchaos: {sum(survived.values())} faults survived {survived}; "
          f"{committed[0]} source transactions")  # fmt: skip
    assert len(survived) >= 9
    assert committed[0] > 500
    assert historic == source
    clickhouse = read_clickhouse(ch_url, ch_database)
    assert clickhouse["rows"] == source
    assert clickhouse["versions"] == historic_versions
