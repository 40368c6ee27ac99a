"""Test support for daemons run as separate processes (kill -9, standby, restarts).

A daemon in another process cannot share this process's embedded ClickHouse engine (one
data path per process), so it gets its own path, and the tests read it in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer

ROOT = Path(__file__).resolve().parents[1]
ITEMS_DDL = (
    "CREATE TABLE director.items (id int PRIMARY KEY, grp int, val text, "
    "amount numeric(12,2), flag boolean NOT NULL DEFAULT false)"
)


def daemon_env(
    pg_dsn: str, clickhouse_server: ClickHouseServer, ch_database: str, tmp_path: Path,
    slot: str, **extra: str,
) -> tuple[dict[str, str], str]:  # fmt: skip
    """Environment for `cdc run` in another process, and the ClickHouse URL it writes to."""
    embedded = clickhouse_server.url.startswith("chdb://")
    ch_url = f"chdb://{tmp_path / 'clickhouse'}" if embedded else clickhouse_server.url
    env = {
        "CDC_SOURCE_DSN": pg_dsn,
        "CDC_CLICKHOUSE_URL": ch_url,
        "CDC_CLICKHOUSE_DATABASE": ch_database,
        "CDC_SLOT": slot,
        "CDC_PUBLICATION": f"{slot}_pub",
        "CDC_BATCH_LATENCY_MS": "30",
        "CDC_STATUS_INTERVAL_S": "0.5",
        **extra,
    }
    return env, ch_url


def start_daemon(env: dict[str, str], log: Path, faults: str = "") -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env, "CDC_FAULTS": faults}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc.cli", "run", "--log-format", "json"],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


READ_CLICKHOUSE = """
import json, sys
from cdc.sinks.clickhouse import client as clickhouse
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
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, f"reading ClickHouse failed:\n{out.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def slot_position(conn: psycopg.Connection[Any], slot: str) -> Lsn | None:
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    return None if row is None or row[0] is None else Lsn.parse(row[0])


def slot_caught_up(conn: psycopg.Connection[Any], slot: str, target: Lsn) -> bool:
    position = slot_position(conn, slot)
    return position is not None and position >= target


def wait_for_slot(
    conn: psycopg.Connection[Any],
    slot: str,
    target: Lsn,
    daemon: subprocess.Popen[bytes],
    stall_s: float = 120.0,
) -> None:
    """Wait until the daemon has acknowledged `target` on `slot`, or died; fail if the slot
    stands still for `stall_s` (a slow daemon, e.g. one change per batch, may take long,
    a stuck one never gets there)."""
    last = slot_position(conn, slot)
    moved = time.monotonic()
    while not slot_caught_up(conn, slot, target) and daemon.poll() is None:
        position = slot_position(conn, slot)
        if position != last:
            last, moved = position, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            raise AssertionError(
                f"the daemon did not catch up: slot {slot} stood at {last} for {stall_s} s "
                f"(target {target})"
            )
        time.sleep(0.2)


def items(conn: psycopg.Connection[Any], relation: str) -> list[list[Any]]:
    """The items rows of `relation` (director.items or historic.items_current), sorted."""
    return sorted(
        [r[0], r[1], r[2], str(r[3]), r[4]]
        for r in conn.execute(f"SELECT id, grp, val, amount, flag FROM {relation}").fetchall()
    )
