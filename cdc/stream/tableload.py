"""Copying the tables the schema follower adds: one at a time, on a thread of its own
started at the first, each at a fresh exported snapshot taken after the table joined the
publication (DESIGN.md invariant 3: every change streamed from then on has a higher
version than the copy).

Until a table's copy has landed, historic holds nothing of that table the stream can take
the values it did not resend from (unchanged TOAST, a tombstone's columns), or only rows
from before a rewrite; a row completed without them would be stored newer than the copy,
its NULLs kept over the copy's values. So such rows wait for the copy
(`TableLoader.wait`).
"""

from __future__ import annotations

import functools
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from cdc.apply.copybounds import CopyBounds
from cdc.errors import CdcError, ErrorKind, backfill_command
from cdc.load.backfill import Backfill
from cdc.ops import faults
from cdc.schema import TableSchema
from cdc.stream.snapshot import Snapshot, SnapshotSource, exported_snapshot

LOAD_JOIN_S = 30.0
WAIT_POLL_S = 0.2

# (tables, job, replaces, snapshots): a copy job; `replaces`: the copy replaces what the
# targets hold; `snapshots`: takes the snapshots it copies again at.
LoadFactory = Callable[[list[TableSchema], str, bool, SnapshotSource], Backfill]


class TableLoader:
    """Copies the tables queued with `queue`; a table whose rows a target cannot hold is
    handed to `quarantine`. A table is in the loader (`in`) while its copy is queued or
    running: rows that need values only the copy holds `wait` for it."""

    def __init__(
        self,
        source_dsn: str,
        make_load: LoadFactory,
        quarantine: Callable[[tuple[str, str], CdcError], None],
        log: Any,
        bounds: CopyBounds | None = None,
    ) -> None:
        """`bounds`: told of each snapshot a copy takes, from before it is requested."""
        self._source_dsn = source_dsn
        self._bounds = bounds or CopyBounds()
        self._make_load = make_load
        self._quarantine = quarantine
        self._log = log
        self._loads: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        # The tables queued and not yet started: (schema, name) -> (the table as last
        # described, whether a copy replaces what its targets hold).
        self._waiting: dict[tuple[str, str], tuple[TableSchema, bool]] = {}
        self._copying: tuple[str, str] | None = None
        self._changed = threading.Condition()  # guards the two above
        self._loader: threading.Thread | None = None

    def __contains__(self, name: tuple[str, str]) -> bool:
        with self._changed:
            return name in self._waiting or name == self._copying

    def wait(self, name: tuple[str, str], rows: int, stopping: Callable[[], bool]) -> None:
        """Block until `name`'s copy has landed (or failed), or `stopping()`: `rows` of a
        batch need values only the copy holds. A row then completed without them is
        stored with NULLs only when the daemon stops first; the table's copy, cut short,
        is made again at the next start at a newer snapshot, which overwrites it."""
        with self._changed:
            if name not in self._waiting and name != self._copying:
                return
            self._log.info("changes_wait_for_copy", table=".".join(name), rows=rows,
                           detail="rows whose TOASTed values the stream did not resend wait "
                           "for the table's copy, which holds them")  # fmt: skip
            while (name in self._waiting or name == self._copying) and not stopping():
                self._changed.wait(WAIT_POLL_S)

    def queue(self, table: TableSchema, replaces: bool = False) -> None:
        """Copy `table` after the ones queued before it (once while it waits: queued again,
        it is copied as described last); `replaces`: the copy replaces every row the
        targets hold. A table queued while it is being copied is copied again after: the
        copy in progress may be of a snapshot from before the change that queued it."""
        key = (table.schema, table.name)
        with self._changed:
            waiting = self._waiting.get(key)
            self._waiting[key] = (table, replaces or (waiting is not None and waiting[1]))
            if waiting is not None:
                return
        if self._loader is None:
            self._loader = threading.Thread(target=self._load_all, name="cdc-table-load",
                                            daemon=True)  # fmt: skip
            self._loader.start()
        self._loads.put(key)

    def _load_all(self) -> None:
        while (key := self._loads.get()) is not None:
            with self._changed:
                table, replaces = self._waiting.pop(key)
                self._copying = key
            try:
                faults.point("before_table_load")
                self._load(table, replaces)
            # Any failure: the loader goes on with the next table, and the changes that
            # waited for this one's copy go on (it stays recorded as due: copied at the
            # next start).
            except Exception as exc:  # noqa: BLE001 - logged with the fix
                hint = f"restart the daemon, or {backfill_command(table.name)}"
                known = isinstance(exc, CdcError | psycopg.Error)
                self._log.error("table_load_failed", table=table.qualified_name,
                                error=str(exc).strip() if known else repr(exc),
                                hint=hint)  # fmt: skip
            finally:
                with self._changed:
                    self._copying = None
                    self._changed.notify_all()

    def _load(self, table: TableSchema, replaces: bool) -> None:
        job = f"table_{table.name}_{uuid.uuid4().hex[:8]}"
        snapshots = functools.partial(self._snapshot, (table.schema, table.name))
        with snapshots() as snapshot:
            self._log.info("table_load_started", table=table.qualified_name,
                           snapshot_lsn=str(snapshot.lsn))  # fmt: skip
            progress = self._make_load([table], job, replaces, snapshots).run(snapshot)
        for name, reason in progress.failed.items():
            self._quarantine((table.schema, name), CdcError(ErrorKind.VALUE_OUT_OF_RANGE, reason))
        self._log.info("table_load_done", table=table.qualified_name, rows=progress.rows)

    @contextmanager
    def _snapshot(self, name: tuple[str, str]) -> Iterator[Snapshot]:
        """A fresh snapshot to copy `name` at, told to the copy bounds from before it is
        requested: the stream may pass its position before it is known."""
        self._bounds.taking(name)
        lsn: int | None = None
        try:
            with exported_snapshot(self._source_dsn) as snapshot:
                lsn = snapshot.lsn
                self._bounds.taken(name, lsn)
                yield snapshot
        finally:
            if lsn is None:
                self._bounds.taken(name, None)

    def close(self) -> None:
        """Stop the loader after the copy in progress (a copy still running after
        `LOAD_JOIN_S` is left: it is copied again at the next start)."""
        if self._loader is None:
            return
        self._loads.put(None)
        self._loader.join(timeout=LOAD_JOIN_S)
        with self._changed:
            if self._loader.is_alive():
                left = {*self._waiting, *([self._copying] if self._copying else [])}
                self._log.warning("table_load_abandoned", tables=sorted(n for _, n in left))
            self._waiting.clear()
            self._copying = None
            self._changed.notify_all()
        self._loader = None
