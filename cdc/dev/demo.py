"""`cdc demo`: the incident end to end on the local stack, with a report a person can read.

Starts the coaching API (uvicorn, its own process) on a fresh `coaching` database and the
daemon (in this process, so the report can read the embedded ClickHouse), replays the
incident with racing clients, waits until the daemon has caught up, then compares
director, historic and ClickHouse row by row, next to what the old async fan-out would have
left on the same run.

The API runs with a random bearer token the demo provisions for itself: written to a 0600
file in a private temporary directory for the API's start (`CDC_API_TOKENS_FILE`), sent
with every request.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from statistics import quantiles
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from pydantic import SecretStr

from cdc.apply.daemon import Daemon
from cdc.check import verify
from cdc.check.drift import all_clean
from cdc.dev import incident, localstack
from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import Settings
from cdc.protocol.lsn import Lsn
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.stream import slots

DATABASE = "coaching"
SLOT = "coaching_demo"
TABLES = ("scorecards", "scores")


@dataclass
class StoreCounts:
    rows: int
    submitted: int | None
    differing: int


@dataclass
class Report:
    requests: int
    statuses: dict[int, int]
    changes: int
    seconds: float
    lags: list[float]
    stores: dict[str, dict[str, StoreCounts]]  # table -> store -> counts
    naive_stale: int
    naive_wrong_status: int
    naive_rows: int
    verified_ranges: int = 0  # key ranges `cdc verify` compared by hash in all three stores
    verify_clean: bool = False

    @property
    def differences(self) -> int:
        differing = sum(c.differing for t in self.stores.values() for c in t.values())
        return differing + (0 if self.verify_clean else 1)


def _normalize(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _rows(result: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    return {tuple(_normalize(v) for v in row) for row in result}


def _pg_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> set[tuple[Any, ...]]:
    query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    return _rows(conn.execute(query).fetchall())


def _ch_rows(client: Any, database: str, table: str) -> set[tuple[Any, ...]]:
    view = f"{quote_identifier(database)}.{quote_identifier(table + '_current')}"
    return _rows(client.query(f"SELECT * FROM {view}").result_rows)


def _submitted(rows: set[tuple[Any, ...]], status_index: int | None) -> int | None:
    if status_index is None:
        return None
    return sum(1 for r in rows if r[status_index] == "submitted")


def _auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only (0600) and write `text` into it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _start_api(dsn: str, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start the API with a fresh random token; return the process and the token."""
    token = secrets.token_urlsafe(32)
    # The API reads its tokens file once, at start: the file is gone once it answers.
    with tempfile.TemporaryDirectory(prefix="cdc-demo-api-") as directory:
        tokens_file = Path(directory) / "api_tokens"
        _write_private(tokens_file, token + "\n")
        env = {**os.environ, "CDC_SOURCE_DSN": dsn, "CDC_API_TOKENS_FILE": str(tokens_file)}
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(port),
             "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        ready = incident.wait_for(lambda: _healthy(port, token) or api.poll() is not None, 60)
    if not ready or api.poll() is not None:
        api.kill()
        raise CdcError(ErrorKind.SETUP, "the coaching API did not start; see its output above")
    return api, token


def _healthy(port: int, token: str) -> bool:
    try:
        response = httpx.get(
            f"http://127.0.0.1:{port}/healthz", headers=_auth_headers(token), timeout=1
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _fresh_database(admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (SLOT,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    return make_conninfo(admin_dsn, dbname=DATABASE)


def run(admin_dsn: str, clickhouse_url: str, clients: int = 8, scorecards: int = 40,
        rounds: int = 150) -> Report:  # fmt: skip
    dsn = _fresh_database(admin_dsn)
    ch_database = "analytics"
    client = clickhouse.connect(clickhouse_url)
    client.command(f"DROP DATABASE IF EXISTS {quote_identifier(ch_database)}")
    port = localstack.free_port()
    api, token = _start_api(dsn, port)
    settings = Settings(
        source_dsn=SecretStr(dsn), clickhouse_url=SecretStr(clickhouse_url),
        clickhouse_database=ch_database, slot=SLOT, publication="coaching",
        batch_latency_ms=50, status_interval_s=2.0,
    )  # fmt: skip
    daemon = Daemon(settings)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), name="cdc-daemon")
    thread.start()
    try:
        if not incident.wait_for(lambda: daemon.streaming.is_set() or not thread.is_alive(), 60):
            raise CdcError(ErrorKind.SETUP, "the daemon did not start streaming")
        started = time.monotonic()
        recorder = incident.race(
            f"http://127.0.0.1:{port}", clients, scorecards, rounds, headers=_auth_headers(token)
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            target = Lsn.parse(row[0]) if row else Lsn.ZERO

            def caught_up() -> bool:
                slot = slots.get_slot(conn, SLOT)
                return slot is not None and (slot.confirmed_flush_lsn or 0) >= target

            if not incident.wait_for(lambda: caught_up() or not thread.is_alive(), 120):
                raise CdcError(ErrorKind.SETUP, "the daemon did not catch up within 120 s")
            seconds = time.monotonic() - started
            report = _compare(conn, client, ch_database, recorder, daemon, seconds)
            results = verify.run(settings, [], range_size=50, wait_s=30, repair=False).results
            report.verified_ranges = sum(r.ranges for r in results)
            report.verify_clean = all_clean(results, [])
    finally:
        stop.set()
        thread.join(timeout=60)
        api.terminate()
        api.wait(timeout=30)
        client.close()
    return report


def _compare(conn: psycopg.Connection[Any], client: Any, ch_database: str,
             recorder: incident.Recorder, daemon: Daemon, seconds: float) -> Report:  # fmt: skip
    stores: dict[str, dict[str, StoreCounts]] = {}
    for table in TABLES:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum",
                (f"director.{table}",),
            ).fetchall()
        ]
        status = columns.index("status") if "status" in columns else None
        source = _pg_rows(conn, "director", table)
        historic = _pg_rows(conn, "historic", f"{table}_current")
        analytics = _ch_rows(client, ch_database, table)
        stores[table] = {
            "director": StoreCounts(len(source), _submitted(source, status), 0),
            "historic": StoreCounts(len(historic), _submitted(historic, status),
                                    len(source ^ historic)),
            "clickhouse": StoreCounts(len(analytics), _submitted(analytics, status),
                                      len(source ^ analytics)),
        }  # fmt: skip
    stale, wrong_status, naive_rows = _naive_outcome(conn, recorder)
    lags = list(daemon.stats.lags)
    return Report(
        requests=sum(recorder.statuses.values()), statuses=dict(recorder.statuses),
        changes=daemon.stats.changes, seconds=seconds, lags=lags, stores=stores,
        naive_stale=stale, naive_wrong_status=wrong_status, naive_rows=naive_rows,
    )  # fmt: skip


def _naive_outcome(
    conn: psycopg.Connection[Any], recorder: incident.Recorder
) -> tuple[int, int, int]:
    """(rows the naive copy has wrong, submitted scorecards it shows as drafts or lost,
    rows it has)."""
    with conn.cursor(row_factory=dict_row) as cur:
        director = {
            str(r["id"]): r
            for r in cur.execute("SELECT id, status, updated_at FROM director.scorecards")
        }
    naive = incident.naive_copy(recorder)
    stale = 0
    for card in director.keys() | naive.keys():
        truth, copy = director.get(card), naive.get(card)
        if truth is None or copy is None:
            stale += 1
            continue
        copied = (copy["status"], datetime.fromisoformat(copy["updated_at"]))
        stale += copied != (truth["status"], truth["updated_at"])
    lost_submissions = sum(
        1
        for card, truth in director.items()
        if truth["status"] == "submitted" and naive.get(card, {}).get("status") != "submitted"
    )
    return stale, lost_submissions, len(naive)


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return quantiles(values, n=100, method="inclusive")[q - 1]
