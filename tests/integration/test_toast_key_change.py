"""Unchanged TOAST values across primary-key changes: the new key's row takes them from the
old key's latest image (the same batch first, else historic), never from the new key.

A value stored out of line (`STORAGE EXTERNAL`, over ~2 kB) is not resent by pgoutput when
an UPDATE leaves it alone, also when that UPDATE moves the row to another key. Each case
runs with every replica identity that carries a key change: the primary key (only the old
key is sent), `USING INDEX` (the old index columns) and `FULL` (the whole old row).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from cdc.apply.batch import Batch
from cdc.apply.batcher import BatchBuilder
from cdc.apply.changes import Record, RecordChunk, Transaction
from cdc.cli import app
from cdc.describe import describe_table
from cdc.errors import CdcError, ErrorKind
from cdc.protocol import UNCHANGED_TOAST, Insert, Relation, RelationColumn, Update
from cdc.protocol.lsn import Lsn
from cdc.protocol.tags import ReplicaIdentity, TupleMarker
from cdc.schema import TableSchema
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.historic.sink import HistoricSink
from tests.harness import ClickHouseServer
from tests.pipeline import cli_env, make_settings, running_daemon, wait_in_step, wait_until

ITEMS = """
CREATE SCHEMA director;
CREATE TABLE director.items (
    order_id int NOT NULL, line int NOT NULL, qty int, note text,
    PRIMARY KEY (order_id, line));
ALTER TABLE director.items ALTER note SET STORAGE EXTERNAL;
"""
IDENTITIES = {
    "primary key": "",
    "using index": "CREATE UNIQUE INDEX items_ident ON director.items (order_id, line); "
    "ALTER TABLE director.items REPLICA IDENTITY USING INDEX items_ident",
    "full": "ALTER TABLE director.items REPLICA IDENTITY FULL",
}
# Each case: statements run in one transaction (so they meet in one batch), on rows
# (order_id, line) for line 1..4 of every order 1..6.
CASES = {
    "shift": ["UPDATE director.items SET line = line + 1000 WHERE order_id = 1"],
    "chain": [
        "UPDATE director.items SET line = 10 WHERE order_id = 2 AND line = 1",
        "UPDATE director.items SET line = 20 WHERE order_id = 2 AND line = 10",
        "UPDATE director.items SET line = 30 WHERE order_id = 2 AND line = 20",
    ],
    "move then touch": [
        "UPDATE director.items SET line = 50 WHERE order_id = 3 AND line = 1",
        "UPDATE director.items SET qty = qty + 1 WHERE order_id = 3 AND line = 50",
    ],
    "touch then move": [
        "UPDATE director.items SET qty = qty + 7 WHERE order_id = 3 AND line = 2",
        "UPDATE director.items SET line = 60 WHERE order_id = 3 AND line = 2",
    ],
    "swap through a temporary key": [
        "UPDATE director.items SET line = -1 WHERE order_id = 4 AND line = 1",
        "UPDATE director.items SET line = 1 WHERE order_id = 4 AND line = 2",
        "UPDATE director.items SET line = 2 WHERE order_id = 4 AND line = -1",
    ],
    "moved away, another moved onto it": [
        "UPDATE director.items SET line = 70 WHERE order_id = 5 AND line = 1",
        "UPDATE director.items SET line = 1 WHERE order_id = 5 AND line = 3",
    ],
    "deleted, another moved onto it": [
        "DELETE FROM director.items WHERE order_id = 6 AND line = 1",
        "UPDATE director.items SET line = 1 WHERE order_id = 6 AND line = 2",
        "UPDATE director.items SET line = 2 WHERE order_id = 6 AND line = 1",
    ],
}


def seed_items(conn: psycopg.Connection[Any]) -> None:
    """Rows with a 3 kB note that does not compress (stored out of line, so unchanged
    notes are not resent)."""
    with conn.transaction():
        for order_id in range(1, 7):
            for line in range(1, 5):
                note = os.urandom(1536).hex()
                conn.execute(
                    "INSERT INTO director.items VALUES (%s, %s, %s, %s)",
                    (order_id, line, line, note),
                )


def test_a_value_no_row_holds_is_said_unless_a_later_copy_covers_the_row(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row whose unchanged value no historic row holds (the table never copied) is
    stored with a NULL and said. A change replayed from before a copy, of a key the copy
    does not hold, is older than the copy (below its truncate watermark, for one that
    replaced the table's rows): a later change of the replay deletes or moves it on, and
    there is nothing to say."""
    monkeypatch.chdir(tmp_path)
    pg.execute(ITEMS)
    seed_items(pg)
    ch = clickhouse_server.client
    settings = make_settings(
        pg_dsn, clickhouse_server.url, ch_database, initial_load=False, batch_size=1
    )
    with capture_logs() as logs, running_daemon(settings, ch):
        pg.execute("UPDATE director.items SET qty = 99 WHERE order_id = 1 AND line = 1")
        wait_until(lambda: pg.execute("SELECT note IS NULL FROM historic.items_current "
                                      "WHERE qty = 99").fetchone() == (True,),
                   what="the update, with no value for its note")  # fmt: skip
    said = [(e["table"], e["rows"]) for e in logs if e["event"] == "unchanged_values_unknown"]
    assert said == [("director.items", 1)]
    # While the daemon is stopped: rows moved to other keys, their notes left alone, one
    # of them deleted then; a copy at a snapshot after these, which holds neither key of
    # the deleted row: replayed, its move has no row to take the note from.
    for order_id, copy in ((3, ["backfill"]), (2, ["backfill", "--replace"])):
        pg.execute("UPDATE director.items SET line = line + 1000 WHERE order_id = %s", (order_id,))
        pg.execute("DELETE FROM director.items WHERE order_id = %s AND line = 1001", (order_id,))
        copied = CliRunner().invoke(app, copy, env=cli_env(settings))
        assert copied.exit_code == 0, copied.output
        with capture_logs() as logs, running_daemon(settings, ch) as running:
            wait_in_step(pg, ch, ch_database, ["items"], running=running)
        assert not [e for e in logs if e["event"] == "unchanged_values_unknown"], copy


def test_a_replay_never_fills_from_an_image_older_than_the_copy_of_a_table_made_again(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """While the daemon is stopped, a note is changed (streamed), then the table is made
    again under its name with its rows and its note changed again (not streamed: the new
    table is in no publication yet). At the start the schema follower copies the new
    table; the replay of the first change and an update after the copy that leaves the
    note unchanged were folded in one batch, and the stale note was stored over the
    copy's."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.notes (id int PRIMARY KEY, n int, note text)")
    pg.execute("ALTER TABLE director.notes ALTER note SET STORAGE EXTERNAL")
    pg.execute("INSERT INTO director.notes VALUES (1, 0, %s)", (os.urandom(1500).hex(),))
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database,
                             batch_latency_ms=6000, schema_poll_interval_s=0.2)  # fmt: skip
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["notes"], running=running)
    stale, fresh = os.urandom(1500).hex(), os.urandom(1500).hex()
    pg.execute("UPDATE director.notes SET note = %s", (stale,))
    pg.execute(
        "ALTER TABLE director.notes RENAME TO notes_old; "
        "CREATE TABLE director.notes (LIKE director.notes_old INCLUDING ALL); "
        "INSERT INTO director.notes SELECT * FROM director.notes_old; "
        "DROP TABLE director.notes_old"
    )
    pg.execute("UPDATE director.notes SET note = %s", (fresh,))
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        wait_until(lambda: any(e["event"] == "table_load_done" for e in logs), 30,
                   "the copy of the table made again")  # fmt: skip
        pg.execute("UPDATE director.notes SET n = n + 1")  # the note left unchanged
        wait_in_step(pg, ch, ch_database, ["notes"], running=running)
    for relation in ("historic.notes_current", "director.notes"):
        assert pg.execute(f"SELECT n, note = %s FROM {relation}", (fresh,)).fetchone() == (
            1,
            True,
        ), relation


@pytest.mark.parametrize("identity", list(IDENTITIES))
@pytest.mark.parametrize("batch_size", [1, 20_000])
def test_key_change_keeps_unchanged_toast(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    identity: str,
    batch_size: int,
) -> None:
    pg.execute(ITEMS)
    if IDENTITIES[identity]:
        pg.execute(IDENTITIES[identity])
    seed_items(pg)
    settings = make_settings(
        pg_dsn, clickhouse_server.url, ch_database, batch_size=batch_size, historic_writers=2
    )
    with running_daemon(settings, clickhouse_server.client) as running:
        wait_in_step(pg, clickhouse_server.client, ch_database, ["items"], running=running)
        # Each case in a transaction of its own.
        for statements in CASES.values():
            with pg.transaction():
                for statement in statements:
                    pg.execute(statement)
        # And back, several cases in one transaction.
        with pg.transaction():
            pg.execute("UPDATE director.items SET line = line - 1000 WHERE line > 1000")
            pg.execute("UPDATE director.items SET line = line + 100, qty = 0 WHERE order_id = 2")
            pg.execute("UPDATE director.items SET order_id = order_id + 10 WHERE line = 1")
        wait_in_step(pg, clickhouse_server.client, ch_database, ["items"], running=running)


def test_parallel_writers_fill_from_the_rows_as_the_batch_found_them(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """A batch large enough to be written by several connections: rows move away from
    keys that new rows then take, in the same batch. The moved rows' unchanged values come
    from the keys' historic rows as they were before the batch, never from the new rows
    another writer may have committed first."""
    pg.execute(ITEMS)
    seed_items(pg)
    pg.execute(
        "INSERT INTO director.items SELECT 100 + g / 10, g % 10, 0, 'filler ' || g "
        "FROM generate_series(1, 3000) g"
    )
    settings = make_settings(
        pg_dsn, clickhouse_server.url, ch_database, historic_writers=4, batch_latency_ms=500
    )
    with running_daemon(settings, clickhouse_server.client) as running:
        wait_in_step(pg, clickhouse_server.client, ch_database, ["items"], running=running)
        with pg.transaction():
            pg.execute("UPDATE director.items SET qty = qty + 1 WHERE order_id >= 100")
            pg.execute("UPDATE director.items SET line = line + 1000 WHERE order_id <= 6")
            for order_id in range(1, 7):
                for line in range(1, 5):
                    pg.execute(
                        "INSERT INTO director.items VALUES (%s, %s, 0, %s)",
                        (order_id, line, os.urandom(1536).hex()),
                    )
        wait_in_step(pg, clickhouse_server.client, ch_database, ["items"], running=running)


def items_table(pg: psycopg.Connection[Any]) -> tuple[TableSchema, Relation]:
    """`director.items` made, and its layout and the relation pgoutput sends for it."""
    pg.execute(ITEMS)
    layout = describe_table(pg, "director", "items")
    return layout, _items_relation(layout)


def _items_relation(layout: TableSchema) -> Relation:
    return Relation(
        xid=None, oid=1, namespace="director", name="items",
        replica_identity=ReplicaIdentity.DEFAULT,
        columns=tuple(
            RelationColumn(c.name in layout.primary_key, c.name, c.type_oid, c.type_modifier)
            for c in layout.columns
        ),
    )  # fmt: skip


def _moves(
    relation: Relation, commit: int, moves: list[tuple[int, int]], line_range: int = 0
) -> Transaction:
    """A transaction moving rows of order 1 from line a to line b, each leaving `note`
    unchanged (as pgoutput sends it: the new row without it, the old key)."""
    records: list[Record] = []
    for a, b in moves:
        new = (b"1", b"%d" % b, b"0", UNCHANGED_TOAST)
        old = (b"1", b"%d" % a, None, None)
        records.append((None, 0, Update(None, 1, TupleMarker.KEY, old, new)))
    return _transaction(relation, commit, records)


def _inserts(relation: Relation, commit: int, rows: dict[int, bytes]) -> Transaction:
    records: list[Record] = [
        (None, 0, Insert(None, 1, (b"1", b"%d" % line, b"0", note))) for line, note in rows.items()
    ]
    return _transaction(relation, commit, records)


def _transaction(relation: Relation, commit: int, records: list[Record]) -> Transaction:
    def chunks() -> Iterator[RecordChunk]:
        yield RecordChunk([relation], 1, records)

    return Transaction(1, Lsn(commit), Lsn(commit + 1), 0, chunks, lambda: None)


@pytest.mark.parametrize("applied_first", ["swap", "swap, then its old keys only"])
def test_a_replay_fills_moved_rows_from_the_rows_as_the_change_found_them(
    pg: psycopg.Connection[Any], pg_dsn: str, applied_first: str
) -> None:
    """A replay after a crash re-reads changes that historic already holds in part: a row
    moved onto a key must take the values that key had just before the move, not those
    of a later state historic reached in the first run (here: line 2 takes line 6's note,
    which line 6 had received from line 5 in an earlier transaction of the same batch)."""
    layout, relation = items_table(pg)
    notes = {5: b"A" * 3000, 6: b"B" * 3000, 2: b"C" * 3000}
    first = _inserts(relation, 10, {5: notes[5], 6: notes[6]})
    swap = _moves(relation, 20, [(6, -1), (5, 6), (-1, 5)])  # 5: B, 6: A
    insert = _inserts(relation, 30, {2: notes[2]})
    move = _moves(relation, 40, [(2, -1), (6, 2), (-1, 6)])  # 2: A, 6: C

    def batch(*transactions: Transaction) -> Batch:
        builder = BatchBuilder(lambda r: layout)
        for transaction in transactions:
            builder.add(transaction)
        return builder.build()

    sink = HistoricSink(pg_dsn, "historic")

    def apply(batch: Batch) -> None:
        sink.complete(batch)
        sink.apply(batch)

    try:
        sink.prepare([layout])
        apply(batch(first))
        apply(batch(swap))  # the first run got this far
        if applied_first != "swap":
            # ... or a partial commit of the move's batch wrote only line 6's tombstone.
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(
                    "UPDATE historic.items SET _is_deleted = true, _version = %s "
                    "WHERE order_id = 1 AND line = 6",
                    ((40 << 64) | 2,),
                )
        apply(batch(swap, insert, move))  # the replay
    finally:
        sink.close()
    rows = pg.execute("SELECT line, note, _is_deleted FROM historic.items ORDER BY line").fetchall()
    got = {line: (note[:1] if note else None, deleted) for line, note, deleted in rows}
    assert got == {-1: ("C", True), 2: ("A", False), 5: ("B", False), 6: ("C", False)}


def test_a_writer_that_lost_its_connection_fails_the_batch_for_a_retry(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """A large batch is written by several connections at once; one of them lost (here:
    terminated, as a restart of Postgres would) fails the batch as a connection error,
    which the daemon retries, and the next try writes it on a new connection."""
    layout, relation = items_table(pg)

    def batch(commit: int) -> Batch:
        builder = BatchBuilder(lambda r: layout)
        builder.add(_inserts(relation, commit, {line: b"n%d" % commit for line in range(3000)}))
        return builder.build()

    sink = HistoricSink(pg_dsn, "historic", writers=2)
    try:
        sink.prepare([layout])
        sink.apply(batch(10))
        # Writer 1 (every second row of the batch: the odd lines) waits on these row locks
        # while writer 0 finishes; then it loses its connection, in the pool's thread.
        with psycopg.connect(pg_dsn) as blocker:
            blocker.execute("SELECT 1 FROM historic.items WHERE line % 2 = 1 FOR UPDATE")

            def terminate() -> None:
                with psycopg.connect(pg_dsn, autocommit=True) as watcher:
                    while not watcher.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'cdc historic writer 1' "
                        "AND wait_event_type = 'Lock'"
                    ).fetchall():
                        time.sleep(0.05)

            terminator = threading.Thread(target=terminate, daemon=True)
            terminator.start()
            with pytest.raises(CdcError) as failed:
                sink.apply(batch(20))
            terminator.join()  # the blocker's locks go when its block ends, not before
        assert failed.value.kind is ErrorKind.SINK_CONNECTION
        sink.apply(batch(20))
    finally:
        sink.close()
    notes = pg.execute("SELECT DISTINCT note FROM historic.items").fetchall()
    assert notes == [("n20",)]
    assert pg.execute("SELECT count(*) FROM historic.items").fetchone() == (3000,)


def test_sinks_receive_complete_immutable_batches(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """Invariant 8: every value is decided before a sink sees the batch. ClickHouse refuses
    a batch that still holds values the stream did not resend (it never fills them with
    NULL); once completed, the sinks apply it in any order with the same result."""
    layout, relation = items_table(pg)
    ch = clickhouse_server.client

    def batch(transaction: Transaction) -> Batch:
        builder = BatchBuilder(lambda r: layout)
        builder.add(transaction)
        return builder.build()

    historic = HistoricSink(pg_dsn, "historic")
    clickhouse = ClickHouseSink(clickhouse_server.url, ch_database, client=ch)
    try:
        first = batch(_inserts(relation, 10, {5: b"A" * 3000, 6: b"B" * 3000}))
        for sink in (historic, clickhouse):
            sink.prepare([layout])
            sink.complete(first)
            sink.apply(first)
        move = batch(_moves(relation, 20, [(5, 7)]))
        with pytest.raises(ValueError, match="completed before it is applied"):
            clickhouse.apply(move)
        with pytest.raises(ValueError, match="completed before it is applied"):
            historic.apply(move)
        historic.complete(move)
        clickhouse.apply(move)  # ClickHouse first: it needs nothing from historic
        historic.apply(move)
    finally:
        historic.close()
        clickhouse.close()
    expected = [(5, "A", True), (6, "B", False), (7, "A", False)]  # a tombstone keeps its values
    rows = pg.execute(
        "SELECT line, left(note, 1), _is_deleted FROM historic.items ORDER BY line"
    ).fetchall()
    assert rows == expected
    got = ch.query(
        f"SELECT line, if(note IS NULL, NULL, substring(note, 1, 1)), _is_deleted "
        f"FROM `{ch_database}`.items FINAL ORDER BY line"
    ).result_rows
    # FINAL shows live rows only (ReplacingMergeTree with `_is_deleted`).
    assert [(line, note, bool(deleted)) for line, note, deleted in got] == expected[1:]
