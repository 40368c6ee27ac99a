"""`cdc backfill` while the daemon streams: new tables, filtered repairs."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from cdc.cli import app
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step

runner = CliRunner()


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
    env = {
        "CDC_SOURCE_DSN": pg_dsn,
        "CDC_CLICKHOUSE_URL": clickhouse_server.url,
        "CDC_CLICKHOUSE_DATABASE": ch_database,
        "CDC_SLOT": settings.slot,
        "CDC_PUBLICATION": settings.publication,
    }
    ch = clickhouse_server.client
    with running_daemon(settings, ch) as running:
        pg.execute("CREATE TABLE director.extra (id int PRIMARY KEY, val text, n int)")
        pg.execute(
            "INSERT INTO director.extra SELECT g, 'old ' || g, g FROM generate_series(1, 5000) g"
        )
        added = runner.invoke(app, ["publication", "add-table", "extra"], env=env)
        assert added.exit_code == 0, added.output
        stop = threading.Event()

        def write() -> None:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                i = 0
                while not stop.is_set():
                    i += 1
                    conn.execute("UPDATE director.extra SET n = n + 1 WHERE id = %s", (i % 5000,))
                    conn.execute("DELETE FROM director.extra WHERE id = %s", (5000 - i,))

        writer = threading.Thread(target=write)
        writer.start()
        try:
            result = runner.invoke(
                app, ["backfill", "extra", "--chunk-size", "700", "--workers", "2"], env=env
            )
        finally:
            stop.set()
            writer.join()
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
