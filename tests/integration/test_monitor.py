"""The drift monitor inside a running daemon: it names tampered rows in historic and in
ClickHouse, stays silent while writers keep the stream busy, and repairs when asked."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Collection, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc.apply.daemon import Daemon
from cdc.check.keyrange import KeyRange
from cdc.check.stores import TableStores
from cdc.load.planning import published_schemas
from cdc.ops.settings import Settings
from cdc.sinks.clickhouse.client import quote_identifier
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step, wait_until

ROWS = 600  # more than one leaf (200 rows): the monitor narrows before it compares keys
INTERVAL_S = 1.0


@pytest.fixture
def scores(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    pg.execute("CREATE SCHEMA director")
    pg.execute(
        "CREATE TABLE director.scores (id int PRIMARY KEY, player text, points int, "
        "tags text[] DEFAULT ARRAY['new', NULL])"
    )
    pg.execute(
        "INSERT INTO director.scores SELECT g, 'player ' || g, g * 10, "
        "CASE WHEN mod(g, 10) = 0 THEN '{}' ELSE ARRAY['a,b', NULL, 'p' || g] END "
        "FROM generate_series(1, %s) g",
        (ROWS,),
    )
    return pg


def test_a_step_reads_the_first_keys_in_key_order(scores: psycopg.Connection[Any]) -> None:
    """The source read of a step is the `size` keys after its lower bound in the key's
    order (numeric here, where text order would take 10 before 2), and its range ends at
    the last of them."""
    table = next(t for t in published_schemas(publication(scores), "cdc_monitor_order"))
    stores = TableStores(table, scores, scores, "historic", None, "analytics")
    read = stores.source_read(("9",), 100)
    assert [row[0] for row in read.rows] == [str(k) for k in range(10, 110)]
    assert read.range == KeyRange(("9",), ("109",))
    tail = stores.source_read(("590",), 100)
    assert len(tail) == 10 and tail.range == KeyRange(("590",), None)


def publication(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute("CREATE PUBLICATION cdc_monitor_order FOR TABLE director.scores")
    return conn


def drift(daemon: Daemon, target: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(
        "cdc_drift_rows", {"table": "director.scores", "target": target}
    )


Logs = Sequence[MutableMapping[str, Any]]


def passes(logs: Logs) -> int:
    return sum(1 for e in logs if e["event"] == "monitor_pass_done")


def events(logs: Logs, name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def tamper(pg: psycopg.Connection[Any], ch: Any, database: str) -> None:
    """Behind the daemon's back: a changed and a deleted row in historic, two changed rows
    in ClickHouse (through the client the daemon writes with): a text, an array element."""
    pg.execute("UPDATE historic.scores SET points = -1 WHERE id = 7")
    pg.execute("DELETE FROM historic.scores WHERE id = 450")
    ch.command(
        f"ALTER TABLE {quote_identifier(database)}.scores UPDATE "
        "player = if(id = 321, 'nobody', player), "
        "tags = if(id = 322, arrayMap(x -> ifNull(x, ''), tags), tags) WHERE id IN (321, 322)",
        settings={"mutations_sync": 2},
    )


# What `tamper` does, as the monitor names it.
TAMPERED: Final = {
    ("historic", "changed"): ["(7)"],
    ("historic", "missing"): ["(450)"],
    ("clickhouse", "changed"): ["(321)", "(322)"],
}
TAMPERED_KEYS: Final = frozenset({7, 321, 322, 450})


def monitored(
    pg_dsn: str, server: ClickHouseServer, ch_database: str, **overrides: Any
) -> Settings:
    """The daemon's settings with the monitor's interval short."""
    return make_settings(
        pg_dsn, server.url, ch_database, monitor_interval_s=INTERVAL_S, **overrides
    )


def test_equality_is_watched_and_drift_named_in_both_targets(
    scores: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    ch = clickhouse_server.client
    settings = monitored(pg_dsn, clickhouse_server, ch_database)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_in_step(scores, ch, ch_database, ["scores"], running=running)
        wait_until(lambda: passes(logs) >= 1, 60, "a first monitor pass")
        assert drift(running.daemon, "historic") == 0
        assert drift(running.daemon, "clickhouse") == 0
        checked = running.daemon.metrics.registry.get_sample_value("cdc_monitor_rows_checked_total")
        assert checked is not None and checked >= ROWS

        tamper(scores, ch, ch_database)
        wait_until(
            lambda: (
                (drift(running.daemon, "historic") or 0) > 0
                and (drift(running.daemon, "clickhouse") or 0) > 0
            ),
            60,
            "the monitor to report drift",
        )
        assert drift(running.daemon, "historic") == 2
        assert drift(running.daemon, "clickhouse") == 2
        found = {(e["target"], e["kind"]): e for e in events(logs, "drift_detected")}
        assert found[("historic", "changed")]["keys"] == ["(7)"]
        assert found[("historic", "missing")]["keys"] == ["(450)"]
        assert found[("clickhouse", "changed")]["keys"] == ["(321)", "(322)"]
        assert all(e["table"] == "director.scores" for e in found.values())
        assert not events(logs, "drift_repaired")  # monitor_repair is off
    assert scores.execute("SELECT points FROM historic.scores WHERE id = 7").fetchone() == (-1,)


@contextmanager
def busy(pg_dsn: str, spare: Collection[int] = ()) -> Iterator[None]:
    """Three writers upsert and delete random keys (never those in `spare`) until the block
    ends."""
    stop = threading.Event()
    errors: list[BaseException] = []
    keys = [k for k in range(1, ROWS + 201) if k not in spare]

    def write(seed: int) -> None:
        chooser = random.Random(seed)
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                while not stop.is_set():
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO director.scores VALUES (%s, 'new', 0) ON CONFLICT (id) "
                            "DO UPDATE SET points = director.scores.points + 1",
                            (chooser.choice(keys),),
                        )
                        if chooser.random() < 0.2:
                            conn.execute(
                                "DELETE FROM director.scores WHERE id = %s", (chooser.choice(keys),)
                            )
        except BaseException as exc:  # noqa: BLE001 - raised again by the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(seed,), daemon=True) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors


def test_monitor_reports_no_drift_while_writers_are_busy(
    scores: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    ch = clickhouse_server.client
    settings = monitored(pg_dsn, clickhouse_server, ch_database)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        with busy(pg_dsn):
            wait_until(lambda: passes(logs) >= 4, 120, "four monitor passes under load")
            checked = running.daemon.metrics.registry.get_sample_value(
                "cdc_monitor_rows_checked_total"
            )
        wait_in_step(scores, ch, ch_database, ["scores"], running=running)
        assert checked is not None and checked >= 4 * ROWS
        assert events(logs, "drift_detected") == []
        assert drift(running.daemon, "historic") == 0
        assert drift(running.daemon, "clickhouse") == 0


def test_drift_is_found_among_keys_changing_since_the_read(
    scores: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """The keys the writers change after a step's read are left out of its comparison;
    the tampered keys beside them, in the same ranges, are still found, and only they."""
    ch = clickhouse_server.client
    settings = monitored(pg_dsn, clickhouse_server, ch_database)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_in_step(scores, ch, ch_database, ["scores"], running=running)
        with busy(pg_dsn, spare=TAMPERED_KEYS):
            tamper(scores, ch, ch_database)
            wait_until(
                lambda: (
                    drift(running.daemon, "historic") == 2
                    and drift(running.daemon, "clickhouse") == 2
                ),
                90,
                "the monitor to report the tampered rows",
            )
        found = {(e["target"], e["kind"]): e["keys"] for e in events(logs, "drift_detected")}
        assert found == TAMPERED
        assert sum(e["newer"] for e in events(logs, "monitor_pass_done")) > 0


def test_monitor_repairs_when_asked(
    scores: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    ch = clickhouse_server.client
    settings = monitored(pg_dsn, clickhouse_server, ch_database, monitor_repair=True)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_in_step(scores, ch, ch_database, ["scores"], running=running)
        tamper(scores, ch, ch_database)
        wait_until(lambda: len(events(logs, "drift_repaired")) >= 3, 60, "the repairs")
        detected = {(e["target"], e["kind"]): e["keys"] for e in events(logs, "drift_detected")}
        repaired = {(e["target"], e["kind"]): e["keys"] for e in events(logs, "drift_repaired")}
        assert detected == repaired
        assert repaired == TAMPERED
        wait_in_step(scores, ch, ch_database, ["scores"], running=running)
        wait_until(
            lambda: (
                drift(running.daemon, "historic") == 0 and drift(running.daemon, "clickhouse") == 0
            ),
            60,
            "the drift gauges to return to 0",
        )
        assert not events(logs, "drift_not_repaired")


def test_freshness_follows_commits_and_idle_heartbeats(
    scores: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database,
                             heartbeat_interval_s=0.2)  # fmt: skip

    def held_since() -> float:
        """The commit time of the newest source transaction both targets hold."""
        freshness = running.daemon.metrics.registry.get_sample_value("cdc_freshness_seconds")
        assert freshness is not None
        return time.time() - freshness

    with running_daemon(settings, ch) as running:
        with scores.transaction():
            row = scores.execute(
                "UPDATE director.scores SET points = 0 WHERE id = 1 "
                "RETURNING extract(epoch FROM now())::float8"
            ).fetchone()
        assert row is not None
        began = row[0]  # the commit is at or after its transaction's start
        wait_in_step(scores, ch, ch_database, ["scores"], running=running)
        wait_until(lambda: held_since() >= began, 30, "the commit to count")
        # Idle: only heartbeats move it past the last commit.
        last = held_since()
        wait_until(lambda: held_since() > last + 0.5, 30, "heartbeats to keep it fresh")


def test_rows_a_truncation_removed_after_the_read_are_not_drift(
    scores: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """A truncation leaves no newer row behind: keys the source held at a step's snapshot
    and a later TRUNCATE removed are absent from the targets without a version to show it.
    Such a range is compared in a later pass, not reported."""
    ch = clickhouse_server.client
    settings = monitored(pg_dsn, clickhouse_server, ch_database)
    stop = threading.Event()

    def truncate_and_refill() -> None:
        chooser = random.Random(7)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("TRUNCATE director.scores")
                    conn.execute(
                        "INSERT INTO director.scores SELECT g, 'refill', g FROM "
                        "generate_series(1, %s) g WHERE random() < 0.5",
                        (chooser.randint(50, ROWS),),
                    )
                time.sleep(0.05)

    with capture_logs() as logs, running_daemon(settings, ch) as running:
        writer = threading.Thread(target=truncate_and_refill, daemon=True)
        writer.start()
        try:
            time.sleep(10 * INTERVAL_S)  # the monitor's steps meet truncations all along
        finally:
            stop.set()
            writer.join(30)
        done = passes(logs)
        wait_until(lambda: passes(logs) >= done + 2, 60, "two monitor passes after them")
        wait_in_step(scores, ch, ch_database, ["scores"], running=running)
        assert events(logs, "drift_detected") == []
