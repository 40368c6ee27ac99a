"""`cdc backfill` while the daemon streams: new tables, filtered repairs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cdc.cli import app
from tests.harness import ClickHouseServer
from tests.pipeline import cli_env, make_settings, running_daemon, wait_in_step

runner = CliRunner()


@contextmanager
def churning(dsn: str, table: str, change: str, rows: int) -> Iterator[None]:
    """The application, while the block runs: an update (`SET change`) of one key after
    another, and a delete from the highest key down, on `director.<table>` (ids 1..rows)."""
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute(f"UPDATE director.{table} SET {change} WHERE id = %s", (i % rows,))
                conn.execute(f"DELETE FROM director.{table} WHERE id = %s", (rows - i,))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


def test_add_table_then_backfill_while_streaming(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.cards (id int PRIMARY KEY, note text)")
    # The tables are added by hand here: the daemon does not follow the schema itself.
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=0)
    env = cli_env(settings)
    ch = clickhouse_server.client
    with running_daemon(settings, ch) as running:
        pg.execute("CREATE TABLE director.extra (id int PRIMARY KEY, val text, n int)")
        pg.execute(
            "INSERT INTO director.extra SELECT g, 'old ' || g, g FROM generate_series(1, 5000) g"
        )
        added = runner.invoke(app, ["publication", "add-table", "extra"], env=env)
        assert added.exit_code == 0, added.output
        with churning(pg_dsn, "extra", "n = n + 1", 5000):
            result = runner.invoke(
                app, ["backfill", "extra", "--chunk-size", "700", "--workers", "2"], env=env
            )
        assert result.exit_code == 0, result.output
        assert "copied" in result.output
        wait_in_step(pg, ch, ch_database, ["cards", "extra"], running=running)

        # Drift repaired by a filtered backfill: rows lost in both targets come back.
        pg.execute("DELETE FROM historic.extra WHERE id <= 50")
        ch.command(f"DELETE FROM `{ch_database}`.extra WHERE id <= 50")
        repaired = runner.invoke(app, ["backfill", "extra", "--where", "id <= 50"], env=env)
        assert repaired.exit_code == 0, repaired.output
        wait_in_step(pg, ch, ch_database, ["extra"], running=running)

    unknown = runner.invoke(app, ["backfill", "nope"], env=env)
    assert unknown.exit_code == 1
    assert "not in the publication: nope" in unknown.output


def test_replacing_backfill_recovers_a_lost_slot_deletes_included(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Changes made while there was no slot were never streamed: a plain backfill brings
    back what the source holds, but rows deleted meanwhile would stay in the targets. The
    recovery the daemon names (`cdc slot recreate`, then `cdc backfill --replace`) leaves
    the targets equal to the source, while the daemon streams."""
    monkeypatch.chdir(tmp_path)
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.cards (id int PRIMARY KEY, note text)")
    pg.execute("INSERT INTO director.cards SELECT g, 'old' FROM generate_series(1, 3000) g")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    env = {"CDC_SOURCE_DSN": pg_dsn, "CDC_CLICKHOUSE_URL": clickhouse_server.url,
           "CDC_CLICKHOUSE_DATABASE": ch_database, "CDC_SLOT": settings.slot,
           "CDC_PUBLICATION": settings.publication}  # fmt: skip
    ch = clickhouse_server.client
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["cards"], running=running)
    dropped = runner.invoke(app, ["slot", "drop"], env=env)
    assert dropped.exit_code == 0, dropped.output
    pg.execute("DELETE FROM director.cards WHERE id % 3 = 0")  # with no slot: never streamed
    pg.execute("UPDATE director.cards SET note = 'missed' WHERE id % 5 = 0")
    recreated = runner.invoke(app, ["slot", "recreate"], env=env)
    assert recreated.exit_code == 0, recreated.output
    assert "backfill --replace" in recreated.output
    refused = runner.invoke(app, ["backfill", "--replace", "--where", "id < 10"], env=env)
    assert refused.exit_code == 1 and "--where cannot be used with --replace" in refused.output
    with running_daemon(settings, ch) as running:
        pg.execute("UPDATE director.cards SET note = 'streamed' WHERE id % 7 = 0")
        with churning(pg_dsn, "cards", "note = 'during'", 3000):
            result = runner.invoke(app, ["backfill", "--replace", "--chunk-size", "400"], env=env)
        assert result.exit_code == 0, result.output
        wait_in_step(pg, ch, ch_database, ["cards"], running=running)
    row = pg.execute("SELECT count(*) FROM historic.cards_current WHERE id % 3 = 0").fetchone()
    assert row is not None and row[0] == 0
