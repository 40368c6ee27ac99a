"""The apply loop's error policy: retry transient sink failures, quarantine bad tables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc.errors import CdcError, ErrorKind
from cdc.ops import faults
from cdc.sinks.clickhouse.client import quote_identifier
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step, wait_until


@pytest.fixture
def fault_spec() -> Iterator[None]:
    yield
    faults.configure(None)


def test_clickhouse_failures_are_retried_without_loss(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    fault_spec: None,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, max_retry_delay_s=0.2)
    faults.configure("before_clickhouse=raise*4")
    with running_daemon(settings, clickhouse_server.client) as running:
        for i in range(50):
            pg.execute("INSERT INTO director.t VALUES (%s, %s)", (i, f"v{i}"))
        wait_in_step(pg, clickhouse_server.client, ch_database, ["t"], running=running)
    assert running.daemon.stats.errors == {"sink_connection": 4}


def test_value_clickhouse_cannot_store_quarantines_only_its_table(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.events (id int PRIMARY KEY, at timestamptz)")
    pg.execute("CREATE TABLE director.other (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with capture_logs() as logs, running_daemon(settings, clickhouse_server.client) as running:
        pg.execute("INSERT INTO director.events VALUES (1, '2024-01-01'), (2, '1850-06-01')")
        pg.execute("INSERT INTO director.other VALUES (1)")
        wait_until(lambda: ("director", "events") in running.daemon.quarantined,
                   what="quarantine")  # fmt: skip
        pg.execute("INSERT INTO director.other VALUES (2)")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["other"], running=running)
    reason = running.daemon.quarantined[("director", "events")]
    assert "director.events" in reason
    assert "'at'" in reason and "1850-06-01" in reason and "key (2)" in reason
    events = [e for e in logs if e["event"] == "table_quarantined"]
    assert events and events[0]["table"] == "director.events"


def test_quarantine_during_a_busy_stream(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """Tables quarantined by the apply threads one after another while rows stream and the
    main thread reports progress (which lists the quarantined tables) many times a second,
    and heartbeats share the catalog with the historic stage: nothing breaks, the other
    table stays exact."""
    pg.execute("CREATE SCHEMA director")
    bad = [f"events_{i}" for i in range(12)]
    for name in bad:
        pg.execute(f"CREATE TABLE director.{name} (id int PRIMARY KEY, at timestamptz)")
    pg.execute("CREATE TABLE director.busy (id int PRIMARY KEY, n int)")
    settings = make_settings(
        pg_dsn, clickhouse_server.url, ch_database, status_interval_s=0.01,
        heartbeat_interval_s=0.01, batch_latency_ms=5, max_retry_delay_s=0.2,
    )  # fmt: skip
    with running_daemon(settings, clickhouse_server.client) as running:
        for i in range(300):
            with pg.transaction():
                pg.execute(
                    "INSERT INTO director.busy VALUES (%s, 0) "
                    "ON CONFLICT (id) DO UPDATE SET n = busy.n + 1",
                    (i % 40,),
                )
                if i % 25 == 0:
                    pg.execute(f"INSERT INTO director.{bad[i // 25]} VALUES (1, '1850-06-01')")
        wait_until(lambda: len(running.daemon.quarantined) == len(bad), what="quarantines")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["busy"], running=running)
    assert set(running.daemon.quarantined) == {("director", name) for name in bad}


def test_a_write_clickhouse_refuses_for_good_stops_instead_of_retrying(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """A column dropped by hand in ClickHouse: every write would fail the same way, so
    the daemon stops, naming the table and the cause, instead of retrying forever as if
    ClickHouse were down (and the slot is not acknowledged past the change)."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    client = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, max_retry_delay_s=0.1)
    with pytest.raises(CdcError) as stopped, running_daemon(settings, client) as running:
        pg.execute("INSERT INTO director.t VALUES (1, 'a')")
        wait_in_step(pg, client, ch_database, ["t"], running=running)
        client.command(f"ALTER TABLE {quote_identifier(ch_database)}.t DROP COLUMN v")
        pg.execute("INSERT INTO director.t VALUES (2, 'b')")
        wait_until(lambda: not running.thread.is_alive(), what="the daemon to stop")
    assert stopped.value.kind is ErrorKind.SCHEMA
    assert "t" in str(stopped.value) and "NO_SUCH_COLUMN" in str(stopped.value)
    assert running.daemon.stats.errors == {}, "not retried"
    row = pg.execute(
        "SELECT confirmed_flush_lsn < pg_current_wal_lsn() FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (settings.slot,),
    ).fetchone()
    assert row == (True,), "the refused change stays in the slot"
