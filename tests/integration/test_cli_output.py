"""What commands print for scripts: `--json` documents checked against the database's own
view, and tables that are never cut when the output is not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cdc.cli import app
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step, wait_until

ROOT = Path(__file__).resolve().parents[2]
LONGEST_SLOT = "s" * 50 + "_longest_name"  # 63 characters: the most Postgres allows
runner = CliRunner()


@pytest.fixture
def env(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no .stack/ here: settings come from the environment only
    return {"CDC_SOURCE_DSN": pg_dsn, "CDC_SLOT": LONGEST_SLOT, "CDC_PUBLICATION": "out_pub"}


def slot_row(pg: psycopg.Connection[Any], slot: str) -> tuple[Any, ...]:
    row = pg.execute(
        "SELECT slot_name, plugin, database, active, confirmed_flush_lsn::text, "
        "restart_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_slot_and_publication_json(pg: psycopg.Connection[Any], env: dict[str, str]) -> None:
    assert len(LONGEST_SLOT) == 63
    pg.execute("CREATE SCHEMA director")
    pg.execute('CREATE TABLE director."Odd Name" (id int PRIMARY KEY)')
    assert runner.invoke(app, ["slot", "create"], env=env).exit_code == 0
    assert runner.invoke(app, ["publication", "create"], env=env).exit_code == 0

    result = runner.invoke(app, ["slot", "status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    name, plugin, database, active, confirmed, restart, wal_status = slot_row(pg, LONGEST_SLOT)
    assert document["slot"] == name == LONGEST_SLOT
    assert (document["plugin"], document["database"]) == (plugin, database)
    assert document["active"] is active is False
    assert document["confirmed_flush_lsn"] == confirmed
    assert document["restart_lsn"] == restart
    assert document["wal_status"] == wal_status
    assert isinstance(document["retained_wal_bytes"], int)

    listed = json.loads(runner.invoke(app, ["slot", "list", "--json"], env=env).stdout)
    assert LONGEST_SLOT in [s["slot"] for s in listed["slots"]]
    ours = next(s for s in listed["slots"] if s["slot"] == LONGEST_SLOT)
    assert ours == document

    shown = json.loads(runner.invoke(app, ["publication", "show", "--json"], env=env).stdout)
    assert shown == {"publication": "out_pub",
                     "tables": [{"schema": "director", "table": "Odd Name"}],
                     "append_publication": "out_pub_append", "append_only_tables": []}  # fmt: skip


def test_tables_are_not_cut_without_a_terminal(
    pg: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """`cdc slot status | cat`: the 63-character slot name and every column in full."""
    assert runner.invoke(app, ["slot", "create"], env=env).exit_code == 0
    _, _, _, _, confirmed, _, _ = slot_row(pg, LONGEST_SLOT)
    for command in (["slot", "status"], ["slot", "list"]):
        out = subprocess.run(
            [sys.executable, "-m", "cdc.cli", *command], cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert LONGEST_SLOT in out.stdout and "…" not in out.stdout, out.stdout
        assert confirmed in out.stdout and "retained WAL" in out.stdout


def test_status_and_verify_json(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    env: dict[str, str],
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    pg.execute("CREATE TABLE director.log (at int)")  # no key: an append-only log
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, slot="json_slot")
    env = {**env, "CDC_SLOT": "json_slot", "CDC_PUBLICATION": settings.publication}
    with running_daemon(settings, clickhouse_server.client) as running:
        pg.execute("INSERT INTO director.t VALUES (1, 'a'), (2, 'b')")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["t"], running=running)
        result = runner.invoke(app, ["status", "--json"], env=env)
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        _, _, _, active, _, _, _ = slot_row(pg, "json_slot")
        assert document["slot"]["slot"] == "json_slot"
        assert document["slot"]["active"] is active is True
        assert document["daemon"]["state"] == "streaming"
        assert document["daemon"]["since"].endswith("+00:00")
        table_state = next(t for t in document["tables"] if t["table"] == "t")
        assert table_state["state"] in ("ready", "streaming") and table_state["error"] is None
        assert table_state["since"].endswith("+00:00")
    # verify reads the embedded engine's data path, which the daemon held until now.
    verify_env = {
        **env,
        "CDC_CLICKHOUSE_URL": settings.require_clickhouse_url(),
        "CDC_CLICKHOUSE_DATABASE": ch_database,
    }
    result = runner.invoke(app, ["verify", "--json", "--wait", "5"], env=verify_env)
    assert result.exit_code == 0, result.output
    verified = json.loads(result.stdout)
    assert verified["clean"] is True
    (table,) = verified["tables"]
    assert table["table"] == "director.t" and table["source_rows"] == 2
    assert table["targets"]["historic"]["status"] == "equal"
    assert [t["table"] for t in verified["not_compared"]] == ["log"]
    shown = runner.invoke(app, ["verify", "--wait", "5"], env=verify_env)
    assert shown.exit_code == 0, shown.output
    assert "not compared: log (append-only logs: no key" in shown.output

    pg.execute("UPDATE historic.t SET v = 'drifted' WHERE id = 2")
    result = runner.invoke(app, ["verify", "--json", "--wait", "5"], env=verify_env)
    assert result.exit_code == 1, result.output
    drifted = json.loads(result.stdout)
    assert drifted["clean"] is False
    assert drifted["tables"][0]["targets"]["historic"]["changed"] == [["2"]]


def recorded(pg: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = pg.execute(query, params).fetchone()
    return None if row is None else row[0]


def test_status_shows_the_monitor_and_freshness(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    env: dict[str, str],
) -> None:
    """The daemon records each table's last drift check and the targets' freshness in
    historic; `cdc status` (another process's view) shows them."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text, tags text[])")
    pg.execute(
        "INSERT INTO director.t SELECT g, 'v' || g, ARRAY['a', NULL] FROM generate_series(1, 50) g"
    )
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, slot="monitored",
                             monitor_interval_s=1.0)  # fmt: skip
    env = {**env, "CDC_SLOT": "monitored", "CDC_PUBLICATION": settings.publication}
    check_sql = "SELECT {} FROM historic._cdc_monitor WHERE table_name = 't'"
    with running_daemon(settings, clickhouse_server.client) as running:
        pg.execute("UPDATE director.t SET v = 'changed' WHERE id = 3")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["t"], running=running)
        started = recorded(pg, "SELECT now()")
        wait_until(
            lambda: (recorded(pg, check_sql.format("checked_at")) or started) > started,
            60,
            "a drift check recorded after the targets caught up",
        )
        wait_until(
            lambda: recorded(pg, "SELECT held_through FROM historic._cdc_daemon") is not None,
            30,
            "the freshness to be recorded",
        )
        result = runner.invoke(app, ["status", "--json"], env=env)
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        held_through = datetime.fromisoformat(document["daemon"]["held_through"])
        assert held_through.utcoffset() == timedelta(0)
        assert isinstance(document["daemon"]["freshness_s"], float)
        assert document["daemon"]["freshness_s"] >= 0
        (table,) = [t for t in document["tables"] if t["table"] == "t"]
        assert table["monitor"]["drift"] == {"historic": 0, "clickhouse": 0}
        checked_at = datetime.fromisoformat(table["monitor"]["checked_at"])
        assert checked_at > started

        shown = runner.invoke(app, ["status"], env=env)
        assert shown.exit_code == 0, shown.output
        assert re.search(r"^freshness: \d+\.\d s \(both targets hold", shown.output, re.M)
        assert "last check" in shown.output
        row = next(line for line in shown.output.splitlines() if line.startswith("│ t "))
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s*│\s*historic 0, clickhouse 0", row), row

        # Drift behind the daemon's back is what the next check records.
        pg.execute("UPDATE historic.t SET v = 'drifted' WHERE id = 7")
        wait_until(
            lambda: recorded(pg, check_sql.format("historic_drift")) == 1,
            60,
            "the monitor to record the drift",
        )
        shown = runner.invoke(app, ["status"], env=env)
        assert "historic 1, clickhouse 0" in shown.output, shown.output
    # A stopped daemon leaves its last freshness: it grows from there.
    document = json.loads(runner.invoke(app, ["status", "--json"], env=env).stdout)
    assert document["daemon"]["state"] == "stopped"
    assert document["daemon"]["held_through"] is not None


def test_status_upgrades_a_historic_schema_from_before_the_monitor(
    pg: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    """A `_cdc_daemon` made by an older release gains the freshness column, keeping its
    rows; `_cdc_monitor` is made."""
    pg.execute("CREATE SCHEMA historic")
    pg.execute(
        "CREATE TABLE historic._cdc_daemon (slot text PRIMARY KEY, state text NOT NULL, "
        "last_error text, updated_at timestamptz NOT NULL DEFAULT now())"
    )
    pg.execute(
        "INSERT INTO historic._cdc_daemon VALUES (%s, 'stopped', 'old error', now())",
        (LONGEST_SLOT,),
    )
    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    daemon = json.loads(result.stdout)["daemon"]
    assert (daemon["state"], daemon["last_error"]) == ("stopped", "old error")
    assert daemon["held_through"] is None and daemon["freshness_s"] is None
    columns = pg.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'historic' AND column_name IN ('held_through', 'checked_at')"
    ).fetchall()
    assert sorted(columns) == [("_cdc_daemon", "held_through"), ("_cdc_monitor", "checked_at")]
    shown = runner.invoke(app, ["status"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "freshness: unknown" in shown.output
