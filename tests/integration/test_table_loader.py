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
from cdc.stream.snapshot import Snapshot
from cdc.stream.tableload import TableLoader


class _Load:
    """A copy that ends as `outcome` says: a number of rows, or an exception raised."""

    def __init__(self, outcome: int | BaseException) -> None:
        self.outcome = outcome
        self.snapshot_lsn: int | None = None

    def run(self, snapshot: Snapshot) -> Progress:
        assert snapshot.lsn  # taken from the real server
        self.snapshot_lsn = snapshot.lsn
        if isinstance(self.outcome, BaseException):
            raise self.outcome
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

    def make_load(chosen: list[TableSchema], job: str, replaces: bool) -> Any:
        return _Load(outcomes[chosen[0].name])

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
    # Each copy divides the stream at its snapshot, the failed one too (rows of it landed).
    started = {e["table"]: int(Lsn.parse(e["snapshot_lsn"])) for e in logs
               if e["event"] == "table_load_started"}  # fmt: skip
    held = {("director", n): TableBatch(tables[n], first_commit=1) for n in ("broken", "fine")}
    first, last = sorted(started.values())
    assert not bounds.splits(held, first - 1), "no copy runs any more"
    assert bounds.splits(held, last), "a change from after the snapshots starts a batch"
    assert not bounds.splits(held, last + 1), "passed"
