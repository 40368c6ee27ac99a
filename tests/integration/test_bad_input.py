"""Bad input: each gets a clear error or a documented handling, and nothing applied is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from tests.harness import ClickHouseServer
from tests.pipeline import (
    RunningDaemon,
    make_settings,
    running_daemon,
    stop_message,
    wait_in_step,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def test_identifiers_that_need_quoting_work_end_to_end(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    schema = 'Dir "Ector"'
    pg.execute('CREATE SCHEMA "Dir ""Ector"""')
    pg.execute(
        'CREATE TABLE "Dir ""Ector"""."Order Lines" ("select" int, "Mixed Case" text, '
        '"quote""d" text, "ünï" numeric, "from" int, PRIMARY KEY ("select", "from"))'
    )
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, source_schema=schema,
                             historic_schema="Hist Oric")  # fmt: skip
    with running_daemon(settings, clickhouse_server.client) as running:
        pg.execute(
            'INSERT INTO "Dir ""Ector"""."Order Lines" VALUES '
            "(1, 'a', 'x', 1.5, 2), (2, 'b''c', 'y', NULL, 3)"
        )
        pg.execute(
            'UPDATE "Dir ""Ector"""."Order Lines" SET "Mixed Case" = \'z\' WHERE "select" = 1'
        )
        pg.execute('DELETE FROM "Dir ""Ector"""."Order Lines" WHERE "select" = 2')
        pg.execute('INSERT INTO "Dir ""Ector"""."Order Lines" VALUES (3, \'new\', \'q\', 7, 1)')
        from tests.pipeline import clickhouse_rows, director_rows, historic_rows

        wait_until(
            lambda: historic_rows(pg, "Order Lines", "Hist Oric")
            == director_rows(pg, schema, "Order Lines")
            == clickhouse_rows(clickhouse_server.client, ch_database, "Order Lines"),
            30, "quoted identifiers to flow",
        )  # fmt: skip
        assert running.thread.is_alive()
    assert len(director_rows(pg, schema, "Order Lines")) == 2


def test_values_and_types_clickhouse_cannot_hold_quarantine_their_table(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.wide (id int PRIMARY KEY, n numeric(100, 2))")
    pg.execute("CREATE TABLE director.big (id int PRIMARY KEY, n numeric)")
    pg.execute("CREATE TABLE director.fine (id int PRIMARY KEY, f float8, huge text)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, clickhouse_server.client) as running:
        quarantined = running.daemon.quarantined
        assert (
            "Decimal" in quarantined[("director", "wide")]
            or "76" in quarantined[("director", "wide")]
        )
        pg.execute("INSERT INTO director.big VALUES (1, 1e40)")
        pg.execute("INSERT INTO director.fine VALUES (1, 'NaN', 'x'), (2, '-Infinity', 'y')")
        # A 100 MB value travels whole to both targets.
        pg.execute("INSERT INTO director.fine VALUES (3, 1, repeat('0123456789', 10485760))")
        wait_until(lambda: ("director", "big") in running.daemon.quarantined, 60,
                   "quarantine of big")  # fmt: skip
        wait_in_step(pg, clickhouse_server.client, ch_database, ["fine"], timeout=120,
                     running=running)  # fmt: skip
    assert "more than 38" in running.daemon.quarantined[("director", "big")]
    size = pg.execute("SELECT length(huge) FROM historic.fine_current WHERE id = 3").fetchone()
    assert size == (104857600,)
    states = dict(pg.execute("SELECT table_name, state FROM historic._cdc_tables").fetchall())
    assert states["wide"] == "quarantined" and states["big"] == "quarantined"


def test_dropped_publication_stops_with_what_to_do(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)

    def drop_publication(running: RunningDaemon) -> None:
        pg.execute("INSERT INTO director.t VALUES (1)")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["t"], running=running)
        pg.execute(f"DROP PUBLICATION {settings.publication}")
        pg.execute("INSERT INTO director.t VALUES (2)")

    message = stop_message(settings, clickhouse_server.client, drop_publication)
    assert "was dropped while streaming" in message and "cdc publication create" in message
    daemon_state = pg.execute("SELECT state, last_error FROM historic._cdc_daemon").fetchone()
    assert daemon_state is not None and daemon_state[0] == "failed"


def test_dropped_slot_stops_with_the_recovery_path(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, max_retry_delay_s=1)

    def drop_slot(running: RunningDaemon) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # terminate the consumer, drop before it returns
            pg.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active",
                (settings.slot,),
            )
            try:
                pg.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot,))
                return
            except psycopg.errors.ObjectInUse:
                continue

    message = stop_message(settings, clickhouse_server.client, drop_slot)
    assert "does not exist" in message
    assert "cdc slot recreate" in message and "cdc backfill" in message


def test_unreachable_or_wrong_servers_fail_clearly(pg_dsn: str, tmp_path: Path) -> None:
    missing_db = make_conninfo(pg_dsn, dbname="no_such_database", password="hunter2")
    embedded = f"chdb://{tmp_path / 'clickhouse'}"
    result = run_cli(
        ["run"],
        {"CDC_SOURCE_DSN": missing_db, "CDC_CLICKHOUSE_URL": embedded,
         "CDC_CONNECT_TIMEOUT_S": "2"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "no_such_database" in result.stderr and "does not exist" in result.stderr
    assert "gave up after 2 s" in result.stderr
    assert "hunter2" not in result.stderr

    closed = "http://default:hunter2@127.0.0.1:1"
    result = run_cli(
        ["run"],
        {"CDC_SOURCE_DSN": pg_dsn, "CDC_CLICKHOUSE_URL": closed, "CDC_CONNECT_TIMEOUT_S": "2"},
    )
    assert result.returncode == 2
    assert "cannot connect to ClickHouse" in result.stderr and "hunter2" not in result.stderr
    assert "gave up after 2 s" in result.stderr, "a target down at start is waited for a while"

    # Outside the local stack there is no default ClickHouse: the daemon does not start.
    result = run_cli(["run"], {"CDC_SOURCE_DSN": pg_dsn}, cwd=tmp_path)
    assert result.returncode == 2
    assert "no ClickHouse: set CDC_CLICKHOUSE_URL" in result.stderr
    assert not (tmp_path / ".stack").exists()

    # A misspelt variable stops the start instead of being ignored.
    result = run_cli(
        ["run"],
        {"CDC_SOURCE_DSN": pg_dsn, "CDC_CLICKHOUSE_ULR": "http://127.0.0.1:1"},
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "unknown environment variable CDC_CLICKHOUSE_ULR" in result.stderr
    assert "CDC_CLICKHOUSE_URL" in result.stderr

    config = tmp_path / "cdc.toml"
    config.write_text("batch_size = 'many'\nslott = 1\n")
    result = run_cli(["--config", str(config), "run"], {"CDC_SOURCE_DSN": pg_dsn})
    assert result.returncode == 1
    assert "'slott' is not a setting" in result.stderr and "'batch_size'" in result.stderr
