"""A schema nobody here designed: pgbench's tables, its tpcb-like workload, a `kill -9` of
the daemon in the middle and a restart. The three keyed tables end equal in all three
stores; `pgbench_history` (no key) is an append-only log, in a publication of inserts and
truncates only: its rows end equal in all three stores too (none lost, none twice across the
kill), and the application can still UPDATE and DELETE every table (DESIGN.md invariant
7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.dev.localstack import find_bindir
from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer
from tests.pipeline import wait_until
from tests.processes import ROOT, daemon_env, slot_caught_up, start_daemon

KEYED = {"pgbench_accounts": "aid", "pgbench_branches": "bid", "pgbench_tellers": "tid"}
ALL = [*KEYED, "pgbench_history"]

READ_CLICKHOUSE = """
import json, sys
from cdc.sinks.clickhouse import client as clickhouse
client = clickhouse.connect(sys.argv[1])
db, tables = sys.argv[2], json.loads(sys.argv[3])
out = {t: [[str(v).rstrip() for v in r] for r in client.query(
    f"SELECT * EXCEPT (_version, _is_deleted) FROM `{db}`.`{t}_current` ORDER BY {k}"
).result_rows] for t, k in tables.items()}
out["pgbench_history"] = [[str(v).rstrip() for v in r] for r in client.query(
    f"SELECT tid, bid, aid, delta, toUnixTimestamp64Micro(mtime), filler "
    f"FROM `{db}`.pgbench_history_current ORDER BY 1, 2, 3, 4, 5"
).result_rows]
out["history_rows"] = client.query(
    f"SELECT count() FROM `{db}`.pgbench_history FINAL"
).result_rows[0][0]
print(json.dumps(out))
client.close()
"""


def rows(conn: psycopg.Connection[Any], relation: str, key: str) -> list[list[str]]:
    result = conn.execute(f"SELECT * FROM {relation} ORDER BY {key}").fetchall()
    return [[str(v).rstrip() for v in r] for r in result]


HISTORY = (
    "SELECT tid, bid, aid, delta, (extract(epoch FROM mtime) * 1000000)::bigint, filler "
    "FROM {} ORDER BY 1, 2, 3, 4, 5"
)


def history(conn: psycopg.Connection[Any], relation: str) -> list[list[str]]:
    result = conn.execute(HISTORY.format(relation)).fetchall()
    return [[str(v).rstrip() for v in r] for r in result]


def pgbench(dsn: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGOPTIONS": "-c search_path=director"}
    return subprocess.Popen(
        [str(find_bindir() / "pgbench"), *args, dsn],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def finished(process: subprocess.Popen[bytes]) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.slow
def test_pgbench_with_a_kill_keeps_the_source_writable_and_every_table_equal(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path,
) -> None:  # fmt: skip
    pg.execute("CREATE SCHEMA director")
    finished(pgbench(pg_dsn, "-i", "-s", "1", "-q"))
    env, ch_url = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, "bench_slot")
    log = tmp_path / "daemon.log"
    daemon = start_daemon(env, log)
    try:
        wait_until(lambda: b"daemon_started" in log.read_bytes() or daemon.poll() is not None,
                   60, "the daemon to stream")  # fmt: skip
        assert daemon.poll() is None, log.read_text()[-3000:]
        workload = pgbench(pg_dsn, "-n", "-c", "4", "-T", "5")
        time.sleep(2)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        daemon = start_daemon(env, log)
        finished(workload)
        row = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = Lsn.parse(row[0])
        wait_until(lambda: slot_caught_up(pg, "bench_slot", target), 120, "the daemon to catch up")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-3000:]
    counted = pg.execute("SELECT count(*) FROM director.pgbench_history").fetchone()
    assert counted is not None and counted[0] > 0  # the workload did run
    history_count = counted[0]
    out = subprocess.run(
        [sys.executable, "-c", READ_CLICKHOUSE, ch_url, ch_database, json.dumps(KEYED)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    clickhouse = json.loads(out.stdout.strip().splitlines()[-1])
    for table, key in KEYED.items():
        source = rows(pg, f"director.{table}", key)
        assert rows(pg, f"historic.{table}_current", key) == source, table
        assert clickhouse[table] == source, table
    # pgbench_history: every insert once, in all three stores (the kill replayed some).
    source_history = history(pg, "director.pgbench_history")
    assert len(source_history) == history_count
    assert history(pg, "historic.pgbench_history") == source_history
    assert history(pg, "historic.pgbench_history_current") == source_history
    assert clickhouse["pgbench_history"] == source_history
    assert clickhouse["history_rows"] == history_count
    published = pg.execute(
        "SELECT pubname, tablename FROM pg_publication_tables "
        "WHERE pubname LIKE 'bench\\_slot\\_pub%' ORDER BY 1, 2"
    ).fetchall()
    assert published == [*[("bench_slot_pub", t) for t in sorted(KEYED)],
                         ("bench_slot_pub_append", "pgbench_history")]  # fmt: skip
    # The application's own writes still work on every table, the keyless one too.
    for table in ALL:
        pg.execute(f"UPDATE director.{table} SET filler = 'x' WHERE bid = 1")
        pg.execute(f"DELETE FROM director.{table} WHERE bid = -1")
