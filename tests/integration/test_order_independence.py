"""Invariant 4: applying captured batches twice, or in reverse order, gives the same state."""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg

from cdc.apply.batch import Batch
from cdc.apply.batcher import BatchBuilder
from cdc.apply.changes import Transaction
from cdc.apply.daemon import Daemon
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.historic.sink import HistoricSink
from cdc.stream.source import ChangeSource, SourceConfig
from tests.harness import ClickHouseServer
from tests.pipeline import clickhouse_rows, director_rows, historic_rows, make_settings

TABLES = ["cards", "lines"]


def workload(conn: psycopg.Connection[Any], seed: int) -> None:
    rng = random.Random(seed)
    conn.execute("CREATE SCHEMA director")
    conn.execute("CREATE TABLE director.cards (id int PRIMARY KEY, status text, score numeric)")
    conn.execute(
        "CREATE TABLE director.lines (card int, line int, note text, PRIMARY KEY (card, line))"
    )
    conn.execute("CREATE PUBLICATION cdc_pub FOR TABLES IN SCHEMA director")
    conn.execute("SELECT pg_create_logical_replication_slot('order_slot', 'pgoutput')")
    for step in range(120):
        if step in (39, 79):
            conn.execute("TRUNCATE director.lines")
        with conn.transaction():
            for _ in range(rng.randint(1, 4)):
                card = rng.randint(1, 12)
                roll = rng.random()
                if roll < 0.4:
                    conn.execute(
                        "INSERT INTO director.cards VALUES (%s, 'draft', %s) ON CONFLICT (id) "
                        "DO UPDATE SET score = excluded.score, status = 'edited'",
                        (card, rng.randint(0, 99)),
                    )
                elif roll < 0.6:
                    conn.execute(
                        "INSERT INTO director.lines VALUES (%s, %s, %s) ON CONFLICT (card, line) "
                        "DO UPDATE SET note = excluded.note",
                        (card, rng.randint(1, 3), f"note {step}"),
                    )
                elif roll < 0.75:
                    conn.execute("DELETE FROM director.cards WHERE id = %s", (card,))
                elif roll < 0.85:
                    conn.execute(
                        "UPDATE director.cards SET id = id + 100 WHERE id = %s "
                        "AND NOT EXISTS (SELECT 1 FROM director.cards WHERE id = %s + 100)",
                        (card, card),
                    )
                elif roll < 0.9:
                    conn.execute("DELETE FROM director.lines WHERE card = %s", (card,))
                else:
                    conn.execute(
                        "UPDATE director.cards SET status = 'submitted' WHERE id = %s", (card,)
                    )


def capture(dsn: str, daemon: Daemon) -> list[Batch]:
    """All transactions of the slot, folded into batches of 7 transactions each."""
    batches: list[Batch] = []
    builder = BatchBuilder(daemon.table_schema)
    with ChangeSource(SourceConfig(dsn, "order_slot", "cdc_pub")) as source:
        source.start()
        deadline = time.monotonic() + 30
        for event in source.events(1.0):
            if isinstance(event, Transaction):
                builder.add(event)
                if builder.transactions == 7:
                    batches.append(builder.build())
            elif event is None:
                break
            assert time.monotonic() < deadline
    if builder.transactions:
        batches.append(builder.build())
    return batches


def test_idempotent_order_free_sinks(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    workload(pg, seed=7)
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    in_order = Daemon(settings, sink_factory=lambda: [
        HistoricSink(pg_dsn, "hist_in_order"),
        ClickHouseSink(clickhouse_server.url, f"{ch_database}_a", client=ch),
    ])  # fmt: skip
    reversed_ = Daemon(settings, sink_factory=lambda: [
        HistoricSink(pg_dsn, "hist_reversed"),
        ClickHouseSink(clickhouse_server.url, f"{ch_database}_b", client=ch),
    ])  # fmt: skip
    try:
        batches = capture(pg_dsn, in_order)
        assert len(batches) > 10
        assert any(t.truncate_version for b in batches for t in b.tables.values())
        for batch in batches + batches:  # in order, then all of it again
            in_order.apply(batch)
        for batch in reversed(batches):
            reversed_.apply(batch)
        for table in TABLES:
            source = director_rows(pg, "director", table)
            assert source, f"the workload left {table} empty"
            assert historic_rows(pg, table, "hist_in_order") == source
            assert historic_rows(pg, table, "hist_reversed") == source
            assert clickhouse_rows(ch, f"{ch_database}_a", table) == source
            assert clickhouse_rows(ch, f"{ch_database}_b", table) == source
    finally:
        for daemon in (in_order, reversed_):
            for sink in daemon.sinks:
                sink.close()
            daemon.catalog.close()
        for suffix in ("_a", "_b"):
            ch.command(f"DROP DATABASE IF EXISTS `{ch_database}{suffix}`")
