"""A batch completed while the batches before it are still being written
(`cdc.apply.unwritten`): its rows take the values the stream did not resend from those
batches' images where they hold the key (historic does not hold them yet), else from
historic; a batch that adds a column waits for them to be written first."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from cdc.apply.batch import Batch
from cdc.apply.batcher import BatchBuilder
from cdc.apply.changes import Record, Transaction
from cdc.apply.unwritten import Unwritten
from cdc.describe import describe_table
from cdc.protocol import UNCHANGED_TOAST, Delete, Relation, RelationColumn, Update
from cdc.protocol.tags import TupleMarker
from cdc.schema import TableSchema
from cdc.sinks.historic.sink import HistoricSink
from cdc.sinks.historic.sql import copy_within_sql, truncate_sql
from tests.integration.test_toast_key_change import (
    _inserts,
    _moves,
    _transaction,
    items_table,
)

NOTE = {line: bytes([64 + line]) * 3000 for line in range(1, 10)}  # out of line, unchanged


def _batch(layout: TableSchema, *transactions: Transaction) -> Batch:
    builder = BatchBuilder(lambda r: layout)
    for transaction in transactions:
        builder.add(transaction)
    return builder.build()


def _touch(relation: Relation, commit: int, lines: list[int]) -> Transaction:
    """`UPDATE ... SET qty = <commit>` of order 1's `lines`, leaving `note` unchanged."""
    records: list[Record] = [
        (
            None,
            0,
            Update(None, 1, None, None, (b"1", b"%d" % line, b"%d" % commit, UNCHANGED_TOAST)),
        )
        for line in lines
    ]
    return _transaction(relation, commit, records)


def _delete(relation: Relation, commit: int, line: int) -> Transaction:
    old = (b"1", b"%d" % line, None, None)
    return _transaction(relation, commit, [(None, 0, Delete(None, 1, TupleMarker.KEY, old))])


def _rows(pg: psycopg.Connection[Any]) -> dict[int, tuple[Any, ...]]:
    rows = pg.execute(
        "SELECT line, qty, left(note, 1), length(note), _is_deleted FROM historic.items"
    ).fetchall()
    return {line: tuple(rest) for line, *rest in rows}


def test_a_batch_completed_before_the_one_before_it_is_written_fills_from_it(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    layout, relation = items_table(pg)
    written = _batch(layout, _inserts(relation, 10, {9: NOTE[9]}))
    first = _batch(layout, _inserts(relation, 20, {line: NOTE[line] for line in (1, 2, 3, 4)}))
    # Each of lines 1-4 and 9 changed without its note, in several ways.
    second = _batch(
        layout,
        _touch(relation, 30, [1, 9]),
        _delete(relation, 40, 2),
        _moves(relation, 50, [(3, 30)]),
        _delete(relation, 60, 4),
        _inserts(relation, 70, {4: NOTE[5]}),
        _touch(relation, 80, [4]),
    )
    sink = HistoricSink(pg_dsn, "historic", writers=2)
    unwritten = Unwritten()
    try:
        sink.prepare([layout])
        sink.complete(written)
        sink.apply(written)
        sink.complete(first, unwritten)
        unwritten.add(first)
        sink.complete(second, unwritten)  # historic holds none of `first` yet
        unwritten.add(second)
        for batch in (first, second):
            sink.apply(batch)
            unwritten.written(batch)
    finally:
        sink.close()
    assert unwritten.batches() == ()
    assert _rows(pg) == {
        1: (30, "A", 3000, False),
        2: (0, "B", 3000, True),  # a tombstone keeps its values
        3: (0, "C", 3000, True),
        30: (0, "C", 3000, False),
        4: (80, "E", 3000, False),
        9: (30, "I", 3000, False),  # from historic: no batch in flight holds it
    }


def test_a_batch_that_adds_a_column_waits_until_the_batches_before_it_are_written(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """Its targets are made in its completion, which no batch in flight may see first (its
    rows would read a column its transaction has not committed yet)."""
    layout, relation = items_table(pg)
    first = _batch(layout, _inserts(relation, 10, {1: NOTE[1]}))
    wider = dataclasses.replace(
        relation, columns=(*relation.columns, RelationColumn(False, "extra", 25, -1))
    )
    pg.execute("ALTER TABLE director.items ADD COLUMN extra text")
    wider_layout = describe_table(pg, "director", "items")
    records: list[Record] = [
        (None, 0, Update(None, 1, None, None, (b"1", b"1", b"5", UNCHANGED_TOAST, b"x")))
    ]
    second = _batch(wider_layout, _transaction(wider, 20, records))
    sink = HistoricSink(pg_dsn, "historic")
    unwritten = Unwritten()
    try:
        sink.prepare([layout])
        sink.complete(first, unwritten)
        unwritten.add(first)
        completing = threading.Thread(target=sink.complete, args=(second, unwritten))
        completing.start()
        completing.join(0.5)
        assert completing.is_alive(), "completed before the batch before it was written"
        sink.apply(first)
        unwritten.written(first)
        completing.join(10)
        assert not completing.is_alive()
        sink.apply(second)
    finally:
        sink.close()
    row = pg.execute("SELECT qty, left(note, 1), extra FROM historic.items").fetchall()
    assert row == [(5, "A", "x")]


def test_closing_the_sink_waits_for_a_completion_reading_on_another_thread(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """A retry of the historic writes closes the sink (to reconnect) while the next batch
    is being completed on the completion stage's thread: its connection is closed only
    once that completion is done, never under its query."""
    layout, relation = items_table(pg)
    first = _batch(layout, _inserts(relation, 10, {1: NOTE[1]}))
    second = _batch(layout, _touch(relation, 20, [1]))
    sink = HistoricSink(pg_dsn, "historic")
    errors: list[BaseException] = []

    def complete() -> None:
        try:
            sink.complete(second)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    try:
        sink.prepare([layout])
        sink.complete(first)
        sink.apply(first)
        with psycopg.connect(pg_dsn) as blocker:
            blocker.execute("LOCK TABLE historic.items IN ACCESS EXCLUSIVE MODE")
            completing = threading.Thread(target=complete)
            completing.start()
            while not pg.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                "'cdc historic reader 0' AND wait_event_type = 'Lock'"
            ).fetchall():
                time.sleep(0.02)
            closing = threading.Thread(target=sink.close)
            closing.start()
            closing.join(0.3)
            assert closing.is_alive(), "closed the connection of a completion in progress"
        completing.join(10)
        closing.join(10)
        assert errors == []
        sink.apply(second)
    finally:
        sink.close()
    assert _rows(pg)[1] == (20, "A", 3000, False)


def test_a_tombstone_whose_row_a_replacing_copy_removed_meanwhile_is_still_written(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """A delete whose historic row holds its values is written by marking that row. A
    replacing copy (`cdc backfill --replace`, the schema follower's) removes the rows older
    than its snapshot from another session: between the batch's completion and its write,
    the row was gone, the delete lost, and the copy (older than the delete) brought the row
    back for good."""
    layout, relation = items_table(pg)
    first = _batch(layout, _inserts(relation, 10 << 32, {1: NOTE[1], 2: NOTE[2]}))
    deletes = _batch(layout, _delete(relation, 90 << 32, 1), _delete(relation, 91 << 32, 2))
    sink = HistoricSink(pg_dsn, "historic")
    snapshot = 50 << 32  # the copy's snapshot: after the inserts, before the deletes
    try:
        sink.prepare([layout])
        sink.complete(first)
        sink.apply(first)
        sink.complete(deletes)  # reads the rows it marks
        with psycopg.connect(pg_dsn) as other:  # the replacing copy's removal
            for statement in truncate_sql("historic", "items"):
                other.execute(statement, {"name": "items", "version": (snapshot << 64) - 1})
        sink.apply(deletes)
        # The copy, of the rows as its snapshot saw them (they still existed).
        pg.execute("INSERT INTO director.items SELECT 1, g, 0, repeat('x', 10) "
                   "FROM generate_series(1, 2) g")  # fmt: skip
        pg.execute(copy_within_sql("historic", layout, sql.SQL("true"), snapshot << 64))
    finally:
        sink.close()
    assert _rows(pg) == {1: (0, "A", 3000, True), 2: (0, "B", 3000, True)}
    assert pg.execute("SELECT count(*) FROM historic.items_current").fetchone() == (0,)
