"""`cdc verify` next to a streaming daemon: agreement, named drift, repair, writes in flight."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from cdc.clickhouse import quote_identifier
from cdc.lsn import Lsn
from cdc.settings import Settings
from cdc.slots import get_slot
from cli import app
from tests.harness import ClickHouseServer
from tests.pipeline import RunningDaemon, make_settings, running_daemon, wait_in_step, wait_until

runner = CliRunner()

CARDS_DDL = """
CREATE TYPE director.mood AS ENUM ('sad', 'ok', 'glad');
CREATE TABLE director.cards (
    id int PRIMARY KEY, big bigint, note text, amount numeric(12,2), ratio numeric,
    at timestamptz, day date, ok bool, ref uuid, doc jsonb, score float8, tags int[],
    local timestamp, small real, span interval, raw bytea, mood director.mood
)"""
CARDS_ROWS = """
INSERT INTO director.cards
SELECT g, g * 1000003::bigint,
       CASE WHEN mod(g, 17) = 0 THEN NULL
            ELSE 'card ' || g || E'\\tcol\\nline \\\\ ü ✓ 日本 ''q''' END,
       CASE WHEN mod(g, 19) = 0 THEN NULL ELSE mod(g, 1000) * 1.25 END,
       g::numeric / 7,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second 7 microseconds',
       date '2020-02-29' + mod(g, 900),
       mod(g, 3) = 0,
       md5(g::text)::uuid,
       jsonb_build_object('g', g, 's', E'x"y\\\\z', 'a', jsonb_build_array(g, null)),
       CASE WHEN mod(g, 11) = 0 THEN 'NaN'::float8 WHEN mod(g, 13) = 0 THEN '-0'::float8
            ELSE g / 3.0 END,
       CASE WHEN mod(g, 5) = 0 THEN NULL ELSE ARRAY[g, NULL, g + 1] END,
       timestamp '1999-12-31 23:59:59.5' + g * interval '1 hour',
       CASE WHEN mod(g, 23) = 0 THEN '-Infinity'::real ELSE g / 7.0 END,
       g * interval '1 day 3 minutes 0.25 seconds',
       decode(md5(g::text), 'hex'),
       (ARRAY['sad', 'ok', 'glad'])[1 + mod(g, 3)]::director.mood
FROM generate_series(%s::int, %s::int) g"""


def env_of(settings: Settings) -> dict[str, str]:
    return {
        "CDC_SOURCE_DSN": settings.require_source_dsn(),
        "CDC_CLICKHOUSE_URL": settings.clickhouse_url.get_secret_value(),
        "CDC_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "CDC_SLOT": settings.slot,
        "CDC_PUBLICATION": settings.publication,
    }


def verify(settings: Settings, *args: str) -> Result:
    return runner.invoke(app, ["verify", *args], env=env_of(settings))


def note_lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


@pytest.fixture
def settings(
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    monkeypatch.chdir(tmp_path)  # no .stack/ here: settings come from the environment only
    return make_settings(pg_dsn, clickhouse_server.url, ch_database)


def load_cards(pg: psycopg.Connection[Any], first: int, last: int) -> None:
    pg.execute(CARDS_ROWS, (first, last))


def caught_up(pg: psycopg.Connection[Any], settings: Settings, running: RunningDaemon) -> None:
    """Wait until the daemon has applied everything written so far (`wait_in_step` cannot
    compare these column types in Python: jsonb, arrays stored as [] for NULL, ...)."""
    row = pg.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert row is not None
    target = row[0]

    def done() -> bool:
        assert running.thread.is_alive(), f"the daemon died: {running.error!r}"
        slot = get_slot(pg, settings.slot)
        return slot is not None and (slot.confirmed_flush_lsn or 0) >= Lsn.parse(target)

    wait_until(done, 30, "the daemon to catch up")


def test_verify_agrees_after_a_workload(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    ch = clickhouse_server.client
    pg.execute("CREATE SCHEMA director")
    pg.execute(CARDS_DDL)
    load_cards(pg, 1, 12_000)  # copied by the initial load
    with running_daemon(settings, ch) as running:
        load_cards(pg, 12_001, 22_000)  # streamed
        pg.execute(
            "UPDATE director.cards SET note = note || E'\\r\\n', score = -score WHERE id % 97 = 0"
        )
        pg.execute("DELETE FROM director.cards WHERE id % 89 = 0")
        pg.execute("UPDATE director.cards SET tags = '{}', ratio = 1e30 WHERE id % 83 = 0")
        caught_up(pg, settings, running)
        result = verify(settings, "--range-size", "5000")
    assert result.exit_code == 0, result.output
    assert "1 tables: all agree" in result.output
    title = re.search(r"verify director\.cards: (\d+) ranges, (\d+) source rows", result.output)
    assert title is not None, result.output
    source_rows = pg.execute("SELECT count(*) FROM director.cards").fetchone()
    assert source_rows is not None
    assert int(title[1]) >= 4 and int(title[2]) == source_rows[0]
    assert re.search(
        r"historic\s*│\s*\d+\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*equal", result.output
    )
    assert re.search(
        r"clickhouse\s*│\s*\d+\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*equal", result.output
    )
    assert "not compared in ClickHouse: tags (integer[])" in result.output

    unknown = verify(settings, "nope")
    assert unknown.exit_code == 2
    assert "not in the publication: nope" in unknown.output


def test_verify_names_drift_and_repair_fixes_it(
    pg: psycopg.Connection[Any], settings: Settings, clickhouse_server: ClickHouseServer
) -> None:
    ch = clickhouse_server.client
    db = quote_identifier(settings.clickhouse_database)
    pg.execute("CREATE SCHEMA director")
    pg.execute(CARDS_DDL)
    load_cards(pg, 1, 6_000)
    with running_daemon(settings, ch) as running:
        load_cards(pg, 6_001, 8_000)
        caught_up(pg, settings, running)
        pg.execute("DELETE FROM historic.cards WHERE id IN (101, 5102)")
        pg.execute("UPDATE historic.cards SET tags = '{9,9}' WHERE id = 304")
        pg.execute(
            "INSERT INTO historic.cards (id, note, _version, _is_deleted) "
            "VALUES (900001, 'ghost', 1, false)"
        )
        ch.command(
            f"INSERT INTO {db}.cards SELECT * REPLACE ('drifted' AS note, _version + 1 AS "
            f"_version) FROM {db}.cards FINAL WHERE id = 203"
        )
        ch.command(
            f"INSERT INTO {db}.cards (id, note, _version, _is_deleted) "
            "VALUES (900001, 'ghost', 1, 0)"
        )

        found = verify(settings, "--range-size", "3000")
        assert found.exit_code == 1, found.output
        assert note_lines(found.output, "historic ") == [
            "historic missing: (101), (5102)",
            "historic extra: (900001)",
            "historic changed: (304)",
        ], found.output
        assert note_lines(found.output, "clickhouse ") == [
            "clickhouse extra: (900001)",
            "clickhouse changed: (203)",
        ], found.output
        assert "drift found" in found.output

        blind = runner.invoke(
            app, ["verify", "--wait", "1"], env={**env_of(settings), "CDC_SLOT": "nope"}
        )
        assert blind.exit_code == 1, blind.output
        assert re.search(r"historic .*│\s*unconfirmed\s*│", blind.output), blind.output
        assert "unconfirmed: slot 'nope' does not exist" in blind.output

        repaired = verify(settings, "--range-size", "3000", "--repair")
        assert repaired.exit_code == 0, repaired.output
        assert "after repair director.cards" in repaired.output
        assert "all agree" in repaired.output
        again = verify(settings)
        assert again.exit_code == 0, again.output
        # The ghost is a tombstone now in both targets, the changed row the source's again.
        ghost = pg.execute("SELECT _is_deleted FROM historic.cards WHERE id = 900001").fetchone()
        assert ghost == (True,)
        note = ch.query(f"SELECT note FROM {db}.cards_current WHERE id = 203").result_rows
        assert note == [pg.execute("SELECT note FROM director.cards WHERE id = 203").fetchone()]


@contextmanager
def writing(dsn: str) -> Iterator[threading.Event]:
    """Writers updating, deleting and inserting ids 1..3000 until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    i = rng.randint(1, 3000)
                    conn.execute(
                        "UPDATE director.busy SET n = n + 1, note = md5(random()::text) "
                        "WHERE id = %s",
                        (i,),
                    )
                    if i % 5 == 0:
                        conn.execute("DELETE FROM director.busy WHERE id = %s", (i + 1,))
                        conn.execute(
                            "INSERT INTO director.busy VALUES (%s, 0, 'back') "
                            "ON CONFLICT (id) DO NOTHING",
                            (i + 2,),
                        )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors


def test_verify_and_repair_during_writes(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    settings: Settings,
    clickhouse_server: ClickHouseServer,
) -> None:
    ch = clickhouse_server.client
    db = quote_identifier(settings.clickhouse_database)
    # Batches wait up to 400 ms: the targets trail the source by that much, so a verify that
    # did not wait for the slot would see the trailing changes as drift.
    settings = settings.model_copy(update={"batch_latency_ms": 400})
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.busy (id int PRIMARY KEY, n int NOT NULL, note text)")
    pg.execute("INSERT INTO director.busy SELECT g, 0, 'start' FROM generate_series(1, 6000) g")
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, settings.clickhouse_database, ["busy"], running=running)
        with writing(pg_dsn):
            calm = verify(settings, "--range-size", "500")
            assert calm.exit_code == 0, calm.output
            assert "all agree" in calm.output

            pg.execute("DELETE FROM historic.busy WHERE id = 4500")  # outside the writers' ids
            drift = verify(settings, "--range-size", "500")
            assert drift.exit_code == 1, drift.output
            assert note_lines(drift.output, "historic ") == ["historic missing: (4500)"], (
                drift.output
            )
            assert note_lines(drift.output, "clickhouse ") == [], drift.output

            # Drift among rows the writers change: the repair copies those pieces while
            # newer versions stream in, and must not undo any of them.
            pg.execute("DELETE FROM historic.busy WHERE id = 1500")
            ch.command(
                f"INSERT INTO {db}.busy SELECT * REPLACE (-1 AS n, _version + 1 AS _version) "
                f"FROM {db}.busy FINAL WHERE id = 2500"
            )
            repaired = verify(settings, "--range-size", "500", "--repair")
            assert repaired.exit_code == 0, repaired.output
            assert "after repair director.busy" in repaired.output
        wait_in_step(pg, ch, settings.clickhouse_database, ["busy"], running=running)
        assert verify(settings).exit_code == 0
