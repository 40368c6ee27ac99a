"""The historic sink's writes: its temporary stage (made once per session and table shape,
emptied at each commit, made again where the transaction that made it was rolled back),
and a large batch dealt out to several writers (`cdc.sinks.historic.shares`)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from cdc.apply.changes import Record, Transaction
from cdc.errors import CdcError
from cdc.protocol import Delete, Relation, Update
from cdc.protocol.tags import TupleMarker
from cdc.sinks.historic.sink import HistoricSink
from tests.integration.test_toast_key_change import _inserts, _transaction, items_table
from tests.integration.test_unwritten import _batch, _rows

LINES = range(1, 6)


def _updates(relation: Relation, commit: int, qty: int) -> Transaction:
    """Every line of order 1 to `qty`, each row resent whole (so it is staged)."""
    records: list[Record] = [
        (None, 0, Update(None, 1, None, None, (b"1", b"%d" % line, b"%d" % qty, b"n")))
        for line in LINES
    ]
    return _transaction(relation, commit, records)


def _stages(pg: psycopg.Connection[Any]) -> int:
    """Temporary stages of every session (they are in the catalog for all to see)."""
    row = pg.execute(
        "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_cdc\\_stage\\_%' "
        "AND relpersistence = 't'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _until_no_stage(pg: psycopg.Connection[Any]) -> None:
    """A closed session's backend drops its temporary tables as it exits, just after."""
    deadline = time.monotonic() + 10
    while _stages(pg) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _stages(pg) == 0


def _writer_pid(pg: psycopg.Connection[Any]) -> int:
    row = pg.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'cdc historic writer 0'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _quantities(pg: psycopg.Connection[Any]) -> set[int]:
    return {row[0] for row in pg.execute("SELECT qty FROM historic.items").fetchall()}


def test_one_stage_serves_every_batch_and_one_rolled_back_is_made_again(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    layout, relation = items_table(pg)
    sink = HistoricSink(pg_dsn, "historic")
    try:
        sink.prepare([layout])
        sink.apply(_batch(layout, _inserts(relation, 10, dict.fromkeys(LINES, b"n"))))
        assert _stages(pg) == 0  # new rows are COPYed straight in
        for commit in (20, 30, 40):
            sink.apply(_batch(layout, _updates(relation, commit, commit)))
            assert _quantities(pg) == {commit}
            assert _stages(pg) == 1  # kept by the session, empty after the commit
        # A batch whose transaction fails after it made the stage: the next one makes it
        # again on the same connection (the failed making was rolled back with it).
        sink.close()
        _until_no_stage(pg)
        pg.execute("ALTER TABLE historic.items ADD CONSTRAINT small CHECK (qty < 45)")
        failing = _batch(layout, _updates(relation, 50, 50))
        with pytest.raises(CdcError, match="small"):
            sink.apply(failing)
        assert _stages(pg) == 0
        session = _writer_pid(pg)
        pg.execute("ALTER TABLE historic.items DROP CONSTRAINT small")
        sink.apply(failing)
        assert _writer_pid(pg) == session
        assert _quantities(pg) == {50}
        assert _stages(pg) == 1
    finally:
        sink.close()
    _until_no_stage(pg)  # gone with the session


def test_a_large_batch_is_written_by_every_writer_each_row_once(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """Deletes whose historic row holds their values (marked deleted, values kept), rows
    new at the source, and updates, in a batch large enough for three writers."""
    layout, relation = items_table(pg)
    first = _batch(layout, _inserts(relation, 10, {line: b"n%d" % line for line in range(1, 3001)}))
    records: list[Record] = []
    for line in range(1, 1001):  # deleted: only the key comes
        records.append(
            (None, 0, Delete(None, 1, TupleMarker.KEY, (b"1", b"%d" % line, None, None)))
        )
    for line in range(1001, 2001):  # updated, resent whole
        records.append((None, 0, Update(None, 1, None, None, (b"1", b"%d" % line, b"7", b"u"))))
    second = _batch(
        layout,
        _transaction(relation, 20, records),
        _inserts(relation, 30, {line: b"n%d" % line for line in range(3001, 4001)}),
    )
    sink = HistoricSink(pg_dsn, "historic", writers=3)
    try:
        sink.prepare([layout])
        for batch in (first, second):
            sink.complete(batch)
            sink.apply(batch)
    finally:
        sink.close()
    rows = _rows(pg)
    assert len(rows) == 4000
    assert all(rows[line] == (0, "n", len(b"n%d" % line), True) for line in range(1, 1001))
    assert all(rows[line] == (7, "u", 1, False) for line in range(1001, 2001))
    assert all(rows[line] == (0, "n", len(b"n%d" % line), False) for line in range(2001, 4001))
    versions = pg.execute(
        "SELECT count(DISTINCT _version) FROM historic.items WHERE line <= 2000"
    ).fetchone()
    assert versions == (2000,)  # each row once, at its own change's version
