"""The schema follower's table loader: a copy that fails, for any reason, neither stops
the copies queued after it nor holds back the changes that wait for it."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import structlog
from structlog.testing import capture_logs

from cdc.apply.batch import TableBatch
from cdc.apply.copybounds import CopyBounds
from cdc.describe import describe_table
from cdc.errors import CdcError
from cdc.load.workers import Progress
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.stream.snapshot import Snapshot, SnapshotSource
from cdc.stream.tableload import TableLoader


class _Load:
    """A copy that ends as `outcome` says: a number of rows (copied again at a second
    snapshot, as a table rewritten while it is copied is), or an exception raised."""

    def __init__(self, outcome: int | BaseException, snapshots: SnapshotSource) -> None:
        self.outcome = outcome
        self.snapshots = snapshots

    def run(self, snapshot: Snapshot) -> Progress:
        assert snapshot.lsn  # taken from the real server
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        with self.snapshots() as again:
            assert again.lsn > snapshot.lsn
        progress = Progress()
        progress.rows = self.outcome
        return progress


def test_a_failed_copy_lets_the_next_ones_and_the_waiting_changes_go_on(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    pg.execute("CREATE SCHEMA director")
    for name in ("broken", "fine"):
        pg.execute(f"CREATE TABLE director.{name} (id int PRIMARY KEY, body text)")
    tables = {name: describe_table(pg, "director", name) for name in ("broken", "fine")}
    outcomes: dict[str, int | BaseException] = {"broken": RuntimeError("a bug"), "fine": 3}

    def make_load(
        chosen: list[TableSchema], job: str, replaces: bool, snapshots: SnapshotSource
    ) -> Any:
        return _Load(outcomes[chosen[0].name], snapshots)

    def quarantine(name: tuple[str, str], error: CdcError) -> None:
        raise AssertionError(f"{name} set aside: {error}")

    log = structlog.get_logger()
    bounds = CopyBounds()
    loader = TableLoader(pg_dsn, make_load, quarantine, log, bounds)
    with capture_logs() as logs:
        loader.queue(tables["broken"])
        loader.queue(tables["fine"])
        assert ("director", "broken") in loader and ("director", "fine") in loader
        waited = threading.Event()

        def changes() -> None:  # as the apply stage does for rows that need the copy
            loader.wait(("director", "broken"), 1, lambda: False)
            loader.wait(("director", "fine"), 1, lambda: False)
            waited.set()

        threading.Thread(target=changes, daemon=True).start()
        assert waited.wait(30), "the changes waiting for the copies were held back"
        loader.close()
    assert ("director", "broken") not in loader and ("director", "fine") not in loader
    failed = [e for e in logs if e["event"] == "table_load_failed"]
    assert [(e["table"], e["error"]) for e in failed] == [
        ("director.broken", "RuntimeError('a bug')")
    ]
    done = [(e["table"], e["rows"]) for e in logs if e["event"] == "table_load_done"]
    assert done == [("director.fine", 3)]
    # Each copy divides the stream at its snapshots, the failed one too (rows of it landed):
    # the first ones are logged, a copy made again takes a later one.
    started = sorted(int(Lsn.parse(e["snapshot_lsn"])) for e in logs
                     if e["event"] == "table_load_started")  # fmt: skip
    held = {("director", n): TableBatch(tables[n], first_commit=1) for n in ("broken", "fine")}
    assert not bounds.splits(held, started[0] - 1), "no snapshot is being taken any more"
    assert bounds.splits(held, started[-1]), "a change from after the snapshots starts a batch"
    assert bounds.splits({}, started[-1] + 1) is False
    held["director", "fine"] = TableBatch(tables["fine"], first_commit=started[-1] + 1)
    assert bounds.splits(held, 1 << 62), "the second snapshot of the copy made again"
    assert not bounds.splits(held, (1 << 62) + 1), "passed"
