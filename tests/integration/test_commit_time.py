"""`_commit_time`: the source transaction's commit time on every streamed row, the same in
historic and ClickHouse; NULL on rows copied at a snapshot; added to older target tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from cdc.sinks.clickhouse.client import quote_identifier
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step

Times = dict[int, tuple[datetime | None, bool]]


def historic_times(pg: psycopg.Connection[Any]) -> Times:
    rows = pg.execute("SELECT id, _commit_time, _is_deleted FROM historic.t").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def clickhouse_times(client: Any, database: str) -> Times:
    """Each key's newest row, tombstones included (FINAL would leave them out)."""
    rows = client.query(
        "SELECT id, argMax(_commit_time, _version), argMax(_is_deleted, _version) "
        f"FROM {quote_identifier(database)}.t GROUP BY id"
    ).result_rows
    return {r[0]: (r[1] and r[1].replace(tzinfo=UTC), bool(r[2])) for r in rows}


def test_streamed_rows_carry_their_transactions_commit_time(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.t VALUES (1, 'copied'), (2, 'copied')")
    client = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, client) as running:
        wait_in_step(pg, client, ch_database, ["t"], running=running)
        loaded = historic_times(pg)
        before = pg.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        with pg.transaction():
            pg.execute("INSERT INTO director.t VALUES (3, 'a'), (4, 'b')")
            pg.execute("UPDATE director.t SET v = 'changed' WHERE id = 1")
        between = pg.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        pg.execute("DELETE FROM director.t WHERE id = 4")
        after = pg.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        wait_in_step(pg, client, ch_database, ["t"], running=running)
    assert loaded == {1: (None, False), 2: (None, False)}, "copied at a snapshot: NULL"
    historic = historic_times(pg)
    assert historic == clickhouse_times(client, ch_database), "the same in both targets"
    first = {historic[i][0] for i in (1, 3)}
    assert len(first) == 1, "one transaction, one commit time"
    (committed,) = first
    assert committed is not None and before <= committed <= between
    deleted_at, deleted = historic[4]
    assert deleted and deleted_at is not None and between <= deleted_at <= after
    assert historic[2] == (None, False), "untouched since the copy"


def test_older_target_tables_gain_the_column(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """Targets made by a version without `_commit_time` get it on start; their rows keep
    NULL until a change writes them."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.t VALUES (1, 'old')")
    client = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, client) as running:
        wait_in_step(pg, client, ch_database, ["t"], running=running)
    pg.execute("ALTER TABLE historic.t DROP COLUMN _commit_time")
    client.command(f"ALTER TABLE {quote_identifier(ch_database)}.t DROP COLUMN _commit_time")
    with running_daemon(settings, client) as running:
        pg.execute("INSERT INTO director.t VALUES (2, 'new')")
        wait_in_step(pg, client, ch_database, ["t"], running=running)
    historic = historic_times(pg)
    assert historic == clickhouse_times(client, ch_database)
    assert historic[1] == (None, False) and historic[2][0] is not None
