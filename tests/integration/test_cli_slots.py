"""`cdc slot ...` and `cdc publication ...` against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cdc.cli import app

runner = CliRunner()


@pytest.fixture
def env(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no .stack/ here: settings come from the environment only
    return {"CDC_SOURCE_DSN": pg_dsn, "CDC_SLOT": "cli_slot", "CDC_PUBLICATION": "cli_pub"}


def test_publication_lifecycle(pg: psycopg.Connection[Any], env: dict[str, str]) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.scorecards (id int PRIMARY KEY)")
    pg.execute('CREATE TABLE director."Odd Name" (id int PRIMARY KEY)')
    result = runner.invoke(app, ["publication", "create"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 tables" in result.output
    tables = pg.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'cli_pub' ORDER BY 1"
    ).fetchall()
    assert tables == [("Odd Name",), ("scorecards",)]

    assert runner.invoke(app, ["publication", "drop-table", "Odd Name"], env=env).exit_code == 0
    again = runner.invoke(app, ["publication", "drop-table", "Odd Name"], env=env)
    assert again.exit_code == 1
    assert "is not in" in again.output
    assert runner.invoke(app, ["publication", "add-table", "Odd Name"], env=env).exit_code == 0
    missing = runner.invoke(app, ["publication", "add-table", "nope"], env=env)
    assert missing.exit_code == 1
    assert "director.nope does not exist" in missing.output
    shown = runner.invoke(app, ["publication", "show"], env=env)
    assert "scorecards" in shown.output
    assert "Odd Name" in shown.output


def test_slot_lifecycle(pg: psycopg.Connection[Any], env: dict[str, str]) -> None:
    created = runner.invoke(app, ["slot", "create"], env=env)
    assert created.exit_code == 0, created.output
    row = pg.execute(
        "SELECT plugin FROM pg_replication_slots WHERE slot_name = 'cli_slot'"
    ).fetchone()
    assert row == ("pgoutput",)
    duplicate = runner.invoke(app, ["slot", "create"], env=env)
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.output
    status = runner.invoke(app, ["slot", "status"], env={**env, "COLUMNS": "200"})
    assert status.exit_code == 0
    assert "cli_slot" in status.output
    assert "reserved" in status.output
    assert runner.invoke(app, ["slot", "drop"], env=env).exit_code == 0
    gone = runner.invoke(app, ["slot", "status"], env=env)
    assert gone.exit_code == 1
    assert "does not exist" in gone.output


def test_unreachable_source_is_a_clear_error(env: dict[str, str]) -> None:
    bad = {**env, "CDC_SOURCE_DSN": "postgresql://u:secret@127.0.0.1:1/db"}
    result = runner.invoke(app, ["slot", "list"], env=bad)
    assert result.exit_code == 1
    assert "cannot connect to the source" in result.output
    assert "secret" not in result.output


def test_status_and_slot_recreate(pg: psycopg.Connection[Any], env: dict[str, str]) -> None:
    from cdc.ops import status
    from cdc.states import DaemonState, TableState

    assert runner.invoke(app, ["slot", "create"], env=env).exit_code == 0
    status.record_daemon(env["CDC_SOURCE_DSN"], "historic", "cli_slot", DaemonState.FAILED,
                         "slot_lost: postgresql://u:secret@h/db gone")  # fmt: skip
    status.record_table(
        env["CDC_SOURCE_DSN"], "historic", "scorecards", TableState.QUARANTINED, "bad"
    )
    shown = runner.invoke(app, ["status"], env={**env, "COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "cli_slot" in shown.output
    assert "daemon: failed" in shown.output
    assert "slot_lost" in shown.output and "secret" not in shown.output
    assert "quarantined" in shown.output
    before = pg.execute(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'cli_slot'"
    ).fetchone()
    pg.execute("SELECT pg_switch_wal()")
    pg.execute("CREATE TABLE bump (x int)")
    recreated = runner.invoke(app, ["slot", "recreate"], env=env)
    assert recreated.exit_code == 0, recreated.output
    assert "cdc backfill" in recreated.output
    after = pg.execute(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'cli_slot'"
    ).fetchone()
    assert before is not None and after is not None and after[0] > before[0]


def test_recreate_refuses_a_slot_a_consumer_streams_from(
    pg: psycopg.Connection[Any], pg_dsn: str, env: dict[str, str]
) -> None:
    """Recreating a slot in use would disconnect the daemon streaming from it and lose its
    place: refused, naming the consumer, unless --force."""
    assert runner.invoke(app, ["slot", "create"], env=env).exit_code == 0
    consumer = psycopg.connect(pg_dsn, replication="database", autocommit=True)
    try:  # (not `with`: leaving it would send a query on a streaming connection)
        consumer.execute("START_REPLICATION SLOT cli_slot LOGICAL 0/0 "
                         "(proto_version '1', publication_names 'cli_pub')")  # fmt: skip
        pid = consumer.info.backend_pid
        refused = runner.invoke(app, ["slot", "recreate"], env=env)
        assert refused.exit_code != 0
        assert f"in use by process {pid}" in refused.output and "--force" in refused.output
        row = pg.execute("SELECT active_pid FROM pg_replication_slots "
                         "WHERE slot_name = 'cli_slot'").fetchone()  # fmt: skip
        assert row == (pid,)
        forced = runner.invoke(app, ["slot", "recreate", "--force"], env=env)
        assert forced.exit_code == 0, forced.output
    finally:
        consumer.close()
    row = pg.execute("SELECT active FROM pg_replication_slots "
                     "WHERE slot_name = 'cli_slot'").fetchone()  # fmt: skip
    assert row == (False,)
