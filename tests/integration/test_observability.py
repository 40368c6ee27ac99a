"""The daemon's endpoint: Prometheus metrics, liveness and readiness."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from cdc.dev import localstack
from tests.harness import ClickHouseServer, PgServer
from tests.pipeline import make_settings, running_daemon, wait_in_step, wait_until


def test_metrics_health_and_readiness(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    port = localstack.free_port()
    settings = make_settings(
        pg_dsn, clickhouse_server.url, ch_database, metrics_port=port, metrics_host="127.0.0.1"
    )
    base = f"http://127.0.0.1:{port}"
    with running_daemon(settings, clickhouse_server.client) as running:
        pg.execute("INSERT INTO director.t SELECT g, 'x' FROM generate_series(1, 30) g")
        pg.execute("UPDATE director.t SET v = 'y' WHERE id <= 10")
        pg.execute("DELETE FROM director.t WHERE id <= 5")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["t"], running=running)
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, what="readiness")
        assert httpx.get(f"{base}/healthz").status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert 'cdc_changes_applied_total{op="insert",table="director.t"} 30.0' in metrics
        assert 'cdc_changes_applied_total{op="update",table="director.t"} 10.0' in metrics
        assert 'cdc_changes_applied_total{op="delete",table="director.t"} 5.0' in metrics
        assert "cdc_batch_apply_seconds_bucket" in metrics
        assert "cdc_apply_lag_seconds" in metrics
        assert httpx.get(f"{base}/nope").status_code == 404
        running.daemon.health.last_apply_ok = False
        not_ready = httpx.get(f"{base}/readyz")
        assert not_ready.status_code == 503
        assert "last apply failed" in not_ready.text


def test_heartbeat_moves_an_idle_slot(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    pg_server: PgServer,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    from cdc.protocol.lsn import Lsn

    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, heartbeat_interval_s=0.2)

    def confirmed() -> Lsn:
        row = pg.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (settings.slot,),
        ).fetchone()
        return Lsn.parse(row[0]) if row and row[0] else Lsn.ZERO

    with (
        running_daemon(settings, clickhouse_server.client) as running,
        psycopg.connect(pg_server.dsn, autocommit=True) as other,
    ):
        other.execute("CREATE TABLE IF NOT EXISTS heartbeat_noise (x text)")
        start = confirmed()

        def moved() -> bool:
            other.execute("INSERT INTO heartbeat_noise VALUES (repeat('x', 100))")
            return confirmed() > start

        wait_until(moved, 15, "the heartbeat to move the slot")
        other.execute("DROP TABLE heartbeat_noise")
        # Idle and flushed while another database writes: nothing is pending, no lag.
        pg.execute("INSERT INTO director.t VALUES (1)")
        registry = running.daemon.metrics.registry

        def no_lag() -> bool:
            other.execute("SELECT pg_logical_emit_message(false, 'noise', 'x')")
            return registry.get_sample_value("cdc_apply_lag_bytes") == 0

        wait_until(no_lag, 15, "an idle pipeline to report no lag")


def test_readiness_follows_a_failing_sink_and_secrets_stay_out_of_logs(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    from psycopg.conninfo import make_conninfo
    from structlog.testing import capture_logs

    from cdc.ops import faults

    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY)")
    port = localstack.free_port()
    dsn = make_conninfo(pg_dsn, password="hunter2")  # trust auth: accepted, never needed
    settings = make_settings(dsn, clickhouse_server.url, ch_database, metrics_port=port,
                             metrics_host="127.0.0.1", max_retry_delay_s=0.3)  # fmt: skip
    ready = f"http://127.0.0.1:{port}/readyz"
    faults.configure("before_clickhouse=raise*15")
    try:
        with capture_logs() as logs, running_daemon(settings, clickhouse_server.client) as run:
            pg.execute("INSERT INTO director.t VALUES (1)")
            wait_until(lambda: httpx.get(ready).status_code == 503, 30, "not ready while failing")
            wait_until(lambda: httpx.get(ready).status_code == 200, 60, "ready after recovery")
            wait_in_step(pg, clickhouse_server.client, ch_database, ["t"], running=run)
    finally:
        faults.configure(None)
    assert any(e["event"] == "apply_retry" for e in logs)
    assert "hunter2" not in repr(logs)
    assert "hunter2" not in repr(settings)
