"""Tables without a key, replicated as append-only logs: published for inserts and truncates
only (the application's UPDATE and DELETE keep working), each row identified by its
`_version`, so identical rows stay distinct and a replay or a re-copy never duplicates one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import psycopg
from structlog.testing import capture_logs
from typer.testing import CliRunner

from cdc.cli import app
from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer
from tests.pipeline import (
    cli_env,
    make_settings,
    running_daemon,
    setup_logs,
    wait_in_step,
    wait_until,
)
from tests.processes import ROOT, daemon_env, slot_caught_up, start_daemon

runner = CliRunner()

LEDGER = """
CREATE SCHEMA director;
CREATE TABLE director.ledger (account int, amount numeric(12,2), note text, at timestamptz);
INSERT INTO director.ledger
    SELECT i % 7, i, 'before', '2026-01-01 00:00+00' FROM generate_series(1, 1000) i;
INSERT INTO director.ledger SELECT 1, 1, 'same', '2026-01-01 00:00+00' FROM generate_series(1, 5);
"""


def count(conn: psycopg.Connection[Any], relation: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {relation}").fetchone()
    assert row is not None
    return int(row[0])


def test_a_keyless_table_is_replicated_as_an_append_only_log(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    pg.execute(LEDGER)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, backfill_chunk_size=300,
                             schema_poll_interval_s=0.3)  # fmt: skip
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        # The initial load copied every row (the identical ones too), in several chunks.
        wait_in_step(pg, ch, ch_database, ["ledger"], running=running)
        chunks = pg.execute("SELECT count(*) FROM historic._cdc_backfill "
                            "WHERE table_name = 'ledger'").fetchone()  # fmt: skip
        assert chunks is not None and chunks[0] > 1
        # Streamed inserts, identical rows in one transaction and across transactions.
        pg.execute("INSERT INTO director.ledger SELECT 2, 2, 'dup', now() "
                   "FROM generate_series(1, 3)")  # fmt: skip
        for _ in range(3):
            pg.execute("INSERT INTO director.ledger VALUES (3, 3, 'again', '2026-02-01')")
        wait_in_step(pg, ch, ch_database, ["ledger"], running=running)
        assert count(pg, "historic.ledger") == count(pg, "director.ledger") == 1011
        # The application's UPDATE and DELETE work; they are not replicated, and said so once.
        pg.execute("UPDATE director.ledger SET note = 'changed' WHERE account = 3")
        pg.execute("DELETE FROM director.ledger WHERE account = 4")
        wait_until(lambda: any(e["event"] == "append_only_changes_not_replicated" for e in logs),
                   what="the updates and deletes to be reported")  # fmt: skip
        # TRUNCATE, then inserts.
        pg.execute("TRUNCATE director.ledger")
        pg.execute("INSERT INTO director.ledger SELECT 5, 5, 'after', now() "
                   "FROM generate_series(1, 4)")  # fmt: skip
        wait_in_step(pg, ch, ch_database, ["ledger"], running=running)
    said = [e for e in logs if e["event"] == "append_only_changes_not_replicated"]
    assert [e["table"] for e in said] == ["director.ledger"]
    assert "ADD PRIMARY KEY" in said[0]["fix"]
    assert pg.execute("SELECT pubupdate, pubdelete FROM pg_publication "
                      "WHERE pubname = 'cdc_pub_append'").fetchone() == (False, False)  # fmt: skip
    key = pg.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'historic.ledger'::regclass "
        "AND i.indisprimary"
    ).fetchall()
    assert key == [("_version",)]
    engine = ch.query(f"SELECT engine, sorting_key FROM system.tables WHERE database = "
                      f"'{ch_database}' AND name = 'ledger'").result_rows  # fmt: skip
    assert engine == [("ReplacingMergeTree", "(_version)")]


def test_backfill_of_a_log_replaces_its_copy_without_duplicates(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path, monkeypatch: Any,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    pg.execute(LEDGER)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, backfill_chunk_size=300)
    env = cli_env(settings, backfill_chunk_size="300")
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["ledger"], running=running)
        # Drift in the targets: rows lost, and a stray copy of a row.
        pg.execute("DELETE FROM historic.ledger WHERE account = 6")
        ch.command(f"DELETE FROM `{ch_database}`.ledger WHERE account = 6")
        pg.execute("INSERT INTO historic.ledger SELECT account, amount, note, at, 1, false "
                   "FROM historic.ledger LIMIT 1")  # fmt: skip
        for _ in range(2):  # copied twice: still every row once
            result = runner.invoke(app, ["backfill", "ledger"], env=env)
            assert result.exit_code == 0, result.output
        pg.execute("INSERT INTO director.ledger VALUES (9, 9, 'streamed', now())")
        wait_in_step(pg, ch, ch_database, ["ledger"], running=running)
        assert count(pg, "historic.ledger") == count(pg, "director.ledger")
    refused = runner.invoke(app, ["backfill", "ledger", "--where", "account = 1"], env=env)
    assert refused.exit_code != 0
    assert "copied whole" in refused.output


READ_LEDGER = """
import json, sys
from cdc.sinks.clickhouse import client as clickhouse
client = clickhouse.connect(sys.argv[1])
db = sys.argv[2]
rows = client.query(
    f"SELECT account, toDecimalString(amount, 2), note FROM `{db}`.ledger_current"
).result_rows
print(json.dumps({"rows": sorted([list(r) for r in rows])}))
client.close()
"""


def ledger(conn: psycopg.Connection[Any], relation: str) -> list[list[Any]]:
    return sorted(
        [r[0], str(r[1]), r[2]]
        for r in conn.execute(f"SELECT account, amount, note FROM {relation}").fetchall()
    )


def inserter(dsn: str, stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = 0
        while not stop.is_set():
            n += 1
            conn.execute("INSERT INTO director.ledger SELECT %s, 1, 'w' "
                         "FROM generate_series(1, %s)", (n % 3, 1 + n % 3))  # fmt: skip
            time.sleep(0.005)


def test_kills_of_the_daemon_leave_a_log_without_duplicates(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, tmp_path: Path,
) -> None:  # fmt: skip
    pg.execute(LEDGER)
    env, ch_url = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, "log_slot",
                             CDC_BACKFILL_CHUNK_SIZE="200")  # fmt: skip
    log = tmp_path / "daemon.log"
    stop = threading.Event()
    writing = threading.Thread(target=inserter, args=(pg_dsn, stop))
    writing.start()
    try:
        # Killed in the initial load, after both targets took a batch but before it was
        # acknowledged, and after historic only.
        for faults in ("mid_backfill_chunk=kill@3", "after_clickhouse=kill@3",
                       "after_historic=kill@4"):  # fmt: skip
            daemon = start_daemon(env, log, faults)
            assert daemon.wait(timeout=90) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        stop.set()
        writing.join()
    row = pg.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    final = start_daemon(env, log)
    try:
        wait_until(lambda: slot_caught_up(pg, "log_slot", Lsn.parse(row[0])), 120,
                   "the daemon to catch up")  # fmt: skip
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(timeout=60) == 0, log.read_text()[-3000:]
    source = ledger(pg, "director.ledger")
    assert len(source) > 1005
    assert ledger(pg, "historic.ledger") == source
    out = subprocess.run([sys.executable, "-c", READ_LEDGER, ch_url, ch_database], cwd=ROOT,
                         capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    clickhouse = json.loads(out.stdout.strip().splitlines()[-1])
    assert clickhouse["rows"] == source
    # Killed in the initial load: the copy was made again at a new snapshot.
    assert log.read_text().count('"initial_load_started"') >= 2


def test_a_slot_older_than_the_log_publication_names_the_keyless_tables_once(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A slot made before the publication of append-only logs (by hand, or by an older
    version) cannot stream it on Postgres 15: the keyless tables it leaves out are named,
    once per start (not again on a setup retry); with none in the schema, that is no
    warning, only a note."""
    pg.execute("CREATE SCHEMA director; CREATE TABLE director.a (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, initial_load=False)
    pg.execute(f"CREATE PUBLICATION {settings.publication} FOR TABLE director.a")
    pg.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (settings.slot,))

    def started() -> list[MutableMapping[str, Any]]:
        return [e for e in setup_logs(settings) if e["event"] == "append_publication_missing"]

    quiet = started()
    assert [e["log_level"] for e in quiet] == ["info"]
    pg.execute("CREATE TABLE director.log (at timestamptz, what text)")
    loud = started()
    assert [(e["log_level"], e["tables"]) for e in loud] == [("warning", ["director.log"])]
    assert "cdc slot recreate" in loud[0]["fix"]
    # The application's own writes to it still work: it is in no publication.
    pg.execute("INSERT INTO director.log VALUES (now(), 'x')")
    pg.execute("UPDATE director.log SET what = 'y'")
    pg.execute("DELETE FROM director.log")


def test_status_and_check_grants_name_a_keyless_table_as_a_log_before_the_first_start(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """Before the daemon first starts, a table without a key is what it will be: an
    append-only log to pick up, not excluded; once a slot exists without the publication
    of logs (made by an older version), it is excluded, with the fix."""
    pg.execute(LEDGER)
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    env = {**cli_env(settings), "CDC_CLICKHOUSE_DATABASE": ch_database}

    def ledger() -> tuple[dict[str, Any], list[str], str]:
        shown = runner.invoke(app, ["status", "--json"], env=env)
        assert shown.exit_code == 0, shown.output
        document = json.loads(shown.stdout)
        row = next(t for t in document["tables"] if t["table"] == "ledger")
        checked = runner.invoke(app, ["check-grants"], env=env)
        return row, [e["table"] for e in document["excluded"]], checked.output

    row, excluded, checked = ledger()
    assert (row["state"], row["append_only"], row["error"]) == ("new", True, None)
    assert excluded == []
    assert "director.ledger is not replicated" not in checked
    pg.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (settings.slot,))
    row, excluded, checked = ledger()
    assert (row["state"], row["append_only"]) == ("excluded", False)
    assert "no primary key" in row["error"] and excluded == ["ledger"]
    assert "director.ledger is not replicated: no primary key" in checked
