"""The apply loop's error policy: retry transient sink failures, quarantine bad tables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc import faults
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
        wait_until(lambda: ("director", "events") in running.daemon._quarantined,
                   what="quarantine")  # fmt: skip
        pg.execute("INSERT INTO director.other VALUES (2)")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["other"], running=running)
    reason = running.daemon._quarantined[("director", "events")]
    assert "director.events" in reason
    assert "'at'" in reason and "1850-06-01" in reason and "key (2)" in reason
    events = [e for e in logs if e["event"] == "table_quarantined"]
    assert events and events[0]["table"] == "director.events"
