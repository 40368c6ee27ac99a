"""Invariant 5: `kill -9` at any moment loses nothing and never moves a row back in time.

The daemon runs as a separate process and is killed repeatedly while writers keep going:
at random moments, and once between the historic write and the ClickHouse write (a fault
point). After a last clean run, director, historic and ClickHouse hold the same rows, and
both targets agree on every row's version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.lsn import Lsn
from tests.harness import ClickHouseServer
from tests.pipeline import wait_until

ROOT = Path(__file__).resolve().parents[2]
KILLS = 6


def start_daemon(env: dict[str, str], log: Path, faults: str = "") -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env, "CDC_FAULTS": faults}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from cli import app; app()", "run", "--log-format", "json"],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


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


READ_CLICKHOUSE = """
import json, sys
from cdc import clickhouse
client = clickhouse.connect(sys.argv[1])
db = sys.argv[2]
rows = client.query(
    f"SELECT id, grp, val, toDecimalString(amount, 2), flag FROM `{db}`.items_current"
).result_rows
versions = client.query(
    f"SELECT id, toString(argMax(_version, _version)) FROM `{db}`.items GROUP BY id"
).result_rows
print(json.dumps({"rows": sorted(list(r) for r in rows), "versions": dict(versions)}))
client.close()
"""


def read_clickhouse(url: str, database: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", READ_CLICKHOUSE, url, database],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def slot_caught_up(conn: psycopg.Connection[Any], slot: str, target: Lsn) -> bool:
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    return row is not None and row[0] is not None and Lsn.parse(row[0]) >= target


@pytest.mark.slow
def test_kill_minus_nine_at_random_moments_loses_nothing(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute(
        "CREATE TABLE director.items (id int PRIMARY KEY, grp int, val text, "
        "amount numeric(12,2), flag boolean NOT NULL DEFAULT false)"
    )
    embedded = clickhouse_server.url.startswith("chdb://")
    ch_url = f"chdb://{tmp_path / 'clickhouse'}" if embedded else clickhouse_server.url
    env = {
        "CDC_SOURCE_DSN": pg_dsn,
        "CDC_CLICKHOUSE_URL": ch_url,
        "CDC_CLICKHOUSE_DATABASE": ch_database,
        "CDC_SLOT": "crash_slot",
        "CDC_PUBLICATION": "crash_pub",
        "CDC_BATCH_LATENCY_MS": "30",
        "CDC_STATUS_INTERVAL_S": "0.5",
    }
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

    source = sorted(
        [r[0], r[1], r[2], str(r[3]), r[4]]
        for r in pg.execute("SELECT id, grp, val, amount, flag FROM director.items").fetchall()
    )
    historic = sorted(
        [r[0], r[1], r[2], str(r[3]), r[4]]
        for r in pg.execute(
            "SELECT id, grp, val, amount, flag FROM historic.items_current"
        ).fetchall()
    )
    historic_versions = {
        str(r[0]): str(r[1])
        for r in pg.execute("SELECT id, _version FROM historic.items").fetchall()
    }
    clickhouse = read_clickhouse(ch_url, ch_database)
    assert len(source) > 10
    assert historic == source
    assert clickhouse["rows"] == source
    assert clickhouse["versions"] == historic_versions
