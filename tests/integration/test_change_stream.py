"""The change source against a real slot: resume, idle advance, aborts, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from cdc.apply.changes import Op, Transaction
from cdc.protocol.lsn import Lsn
from cdc.stream.source import ChangeSource, SourceConfig
from tests.harness import PgServer

SMALL_WORK_MEM = "-c logical_decoding_work_mem=64kB"


def make_slot(pg: psycopg.Connection[Any], tables: str = "t") -> None:
    pg.execute(f"CREATE PUBLICATION pub FOR TABLE {tables}")
    pg.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')")


def drain(source: ChangeSource, want: int, timeout: float = 20.0) -> list[Transaction]:
    """Transactions until `want` arrived and the stream is idle, acknowledging each."""
    got: list[Transaction] = []
    deadline = time.monotonic() + timeout
    for event in source.events(0.3):
        if isinstance(event, Transaction):
            got.append(event)
            source.acknowledge(event.end_lsn)
        elif event is None and len(got) >= want:
            break
        assert time.monotonic() < deadline, f"only {len(got)} of {want} transactions arrived"
    return got


def ids(txns: list[Transaction]) -> list[int]:
    return [
        int(c.new[0]) for t in txns for c in t.changes() if c.new and isinstance(c.new[0], bytes)
    ]


def slot_position(pg: psycopg.Connection[Any]) -> Lsn:
    row = pg.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'slot'"
    ).fetchone()
    assert row is not None
    return Lsn.parse(row[0])


def test_resume_after_disconnect_skips_nothing_and_repeats_nothing_acknowledged(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    make_slot(pg)
    for i in range(1, 6):
        pg.execute("INSERT INTO t VALUES (%s)", (i,))
    source = ChangeSource(SourceConfig(pg_dsn, "slot", "pub", status_interval=0.2))
    source.start()
    try:
        first = drain(source, 5)
        assert ids(first) == [1, 2, 3, 4, 5]
        source.stream.send_status()
        # Kill the walsender from the server side: the source must reconnect by itself.
        pg.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = 'slot'"
        )
        for i in range(6, 11):
            pg.execute("INSERT INTO t VALUES (%s)", (i,))
        second = drain(source, 5)
        assert source.reconnects >= 1
        assert ids(second) == [6, 7, 8, 9, 10]
    finally:
        source.close()

    # A new consumer starts after what was acknowledged: nothing is delivered twice.
    pg.execute("INSERT INTO t VALUES (11)")
    with ChangeSource(SourceConfig(pg_dsn, "slot", "pub")) as again:
        again.start()
        assert ids(drain(again, 1)) == [11]


def test_unacknowledged_transactions_are_replayed_after_restart(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    make_slot(pg)
    for i in range(1, 4):
        pg.execute("INSERT INTO t VALUES (%s)", (i,))
    with ChangeSource(SourceConfig(pg_dsn, "slot", "pub", status_interval=0.1)) as source:
        source.start()
        txns = []
        for event in source.events(0.3):
            if isinstance(event, Transaction):
                txns.append(event)
            if len(txns) == 3:
                break
        source.acknowledge(txns[0].end_lsn)  # only the first is durable
        source.stream.send_status()
    assert slot_position(pg) == txns[0].end_lsn
    with ChangeSource(SourceConfig(pg_dsn, "slot", "pub")) as again:
        again.start()
        assert ids(drain(again, 2)) == [2, 3]


def test_idle_slot_advances_while_other_databases_write(
    pg: psycopg.Connection[Any], pg_dsn: str, pg_server: PgServer
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    make_slot(pg)
    start = slot_position(pg)
    with (
        ChangeSource(SourceConfig(pg_dsn, "slot", "pub", status_interval=0.2)) as source,
        psycopg.connect(pg_server.dsn, autocommit=True) as other,
    ):
        source.start()
        other.execute("CREATE TABLE IF NOT EXISTS wal_noise (x text)")
        deadline = time.monotonic() + 30
        advanced = start
        while advanced <= start and time.monotonic() < deadline:
            other.execute(
                "INSERT INTO wal_noise SELECT repeat('x', 1000) FROM generate_series(1, 200)"
            )
            other.execute("SELECT pg_switch_wal()")
            for event in source.events(0.5):
                assert event is None, "no change to the published table was made"
                break
            advanced = slot_position(pg)
        other.execute("DROP TABLE wal_noise")
    assert advanced > start, "confirmed_flush_lsn of an idle slot never moved"


def test_streamed_transaction_that_aborts_leaves_no_trace(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    make_slot(pg)
    dsn = make_conninfo(pg_dsn, options=SMALL_WORK_MEM)
    with ChangeSource(SourceConfig(dsn, "slot", "pub", status_interval=0.2)) as source:
        source.start()
        starts = 0
        decode = source.decoder.decode
        with psycopg.connect(pg_dsn) as writer:
            writer.execute(
                "INSERT INTO t SELECT g, repeat('a', 200) FROM generate_series(1, 5000) g"
            )
            # While the big transaction is open, let the server stream it to us.
            deadline = time.monotonic() + 20
            while starts == 0 and time.monotonic() < deadline:
                payload = source.stream.read(0.5)
                if payload is None:
                    continue
                message = decode(payload)
                starts += type(message).__name__ == "StreamStart"
                assert source.assembler.feed(message, len(payload)) is None
            writer.rollback()
        assert starts > 0, "the large transaction was not streamed"
        assert source.assembler.has_open_transaction
        pg.execute("INSERT INTO t VALUES (-1, 'after')")
        txns = drain(source, 1)
    assert [(c.op, c.new) for t in txns for c in t.changes()] == [(Op.INSERT, (b"-1", b"after"))]


PEAK_RSS_SCRIPT = """
import json, resource, sys, time
from cdc.apply.changes import Transaction
from cdc.stream.source import ChangeSource, SourceConfig
dsn, budget = sys.argv[1], int(sys.argv[2])
source = ChangeSource(SourceConfig(dsn, "slot", "pub", memory_budget=budget))
source.start()
rows = 0
for event in source.events(2.0):
    if isinstance(event, Transaction):
        rows += sum(1 for _ in event.changes())
        event.close()
        source.acknowledge(event.end_lsn)
    elif event is None and rows:
        break
source.close()
print(json.dumps({"rows": rows,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def consume_in_subprocess(dsn: str, budget: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, dsn, str(budget)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_bounded_memory_for_a_transaction_100x_the_budget(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    budget = 512 * 1024
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    make_slot(pg)
    pg.execute("INSERT INTO t SELECT g, repeat('s', 100) FROM generate_series(1, 1000) g")
    small = consume_in_subprocess(pg_dsn, budget)
    assert small["rows"] == 1000
    # ~60 MB of row data on the wire: more than 100 times the budget.
    pg.execute(
        "INSERT INTO t SELECT g, repeat(md5(g::text), 6) FROM generate_series(1001, 300000) g"
    )
    large = consume_in_subprocess(make_conninfo(pg_dsn, options=SMALL_WORK_MEM), budget)
    assert large["rows"] == 299000
    growth_mb = (large["peak_kb"] - small["peak_kb"]) / 1024
    assert growth_mb < 40, f"peak RSS grew by {growth_mb:.0f} MB for a spilled transaction"
