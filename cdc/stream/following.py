"""Follow the source schema while streaming: tables created, dropped, or partitioned further.

Every few seconds the daemon's main loop calls `SchemaFollower.poll`, which compares the
source schema's tables with the publication (`plan`, a pure function) and acts:

- a new table that may be published (`cdc.stream.eligibility`) gets its targets, is added to the
  publication, and its existing rows are copied in the background at a fresh exported
  snapshot, taken after the table joined the publication (DESIGN.md invariant 3: every
  change streamed from then on has a higher version than the copy). "New" means: not in
  the publication and never replicated before (no state recorded, or recorded as excluded
  or dropped), so a table taken out with `cdc publication drop-table` stays out;
- a published table whose UPDATE and DELETE Postgres would refuse (its primary key was
  dropped) leaves the publication at once (invariant 7), and is added again when fixed;
- a table that may not be published is logged once with the statement that fixes it;
- a partitioned table that gained partitions is copied again (rows of an attached
  partition were never streamed; the copy is versioned, so it overwrites nothing newer);
- a dropped table stops with a log line; its targets are kept.

A table without a usable replica identity is followed the same way through the append
publication (`slots.append_publication`: inserts and truncates only), as an append-only
log; once it is seen updated or deleted from at the source (`pg_stat_user_tables`), the
daemon says once that those changes are not replicated and how to fix it.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc.errors import Action, CdcError, ErrorKind
from cdc.load.backfill import Backfill
from cdc.ops import status
from cdc.ops.settings import Settings
from cdc.schema import TableSchema, describe_table
from cdc.sinks.factory import SinkFactory
from cdc.states import TableState
from cdc.stream import eligibility, slots
from cdc.stream.catalog import Catalog
from cdc.stream.eligibility import Exclusion, SourceTable
from cdc.stream.snapshot import exported_snapshot

# Recorded states after which a table that is not published is picked up as new.
PICKED_UP_AGAIN = frozenset({TableState.EXCLUDED, TableState.DROPPED})
# A load cut short (the daemon stopped while copying): copied again after a restart.
CUT_SHORT = frozenset({TableState.COPYING})
LOAD_JOIN_S = 30.0


# Also picked up as an append-only log: a keyless table an older version quarantined.
LOG_PICKED_UP_AGAIN = PICKED_UP_AGAIN | {TableState.QUARANTINED}
LOG_CHANGES_SQL = """
SELECT relname, n_tup_upd + n_tup_del FROM pg_stat_user_tables
WHERE schemaname = %(schema)s AND relname = ANY(%(tables)s) AND n_tup_upd + n_tup_del > 0
"""


@dataclass(frozen=True)
class Plan:
    add: tuple[str, ...] = ()  # publish, create targets, copy
    add_log: tuple[str, ...] = ()  # the same, in the append publication
    reload: tuple[str, ...] = ()  # published; copy again
    unpublish: tuple[Exclusion, ...] = ()  # published, but Postgres would refuse its writes
    excluded: tuple[Exclusion, ...] = ()  # newly not publishable: say why, once
    dropped: tuple[str, ...] = ()  # followed, gone from the schema
    seen: Mapping[str, frozenset[int]] | None = None  # the tables followed now: partitions
    logs: tuple[str, ...] = ()  # the append-only logs followed now


def plan(
    tables: list[SourceTable],
    published: set[str],
    recorded: Mapping[str, str],
    seen: Mapping[str, frozenset[int]] | None,
    excluded_before: set[str],
    publishes_changes: bool,
    appended: set[str] | None = None,
) -> Plan:
    """What to do about the schema's `tables`, given the publication's tables, each table's
    recorded state, the tables followed at the last poll with their partitions (None at the
    first poll after start), the tables already reported excluded, and the append
    publication's tables (None: there is none, so keyless tables are excluded).

    A table in the append publication stays an append-only log even once it has a key
    (its targets are keyed by `_version`): docs/architecture.md says how to convert it."""
    add: list[str] = []
    add_log: list[str] = []
    reload: list[str] = []
    unpublish: list[Exclusion] = []
    excluded: list[Exclusion] = []
    followed: dict[str, frozenset[int]] = {}
    logs: list[str] = []
    for table in tables:
        why = eligibility.exclusion(table, publishes_changes)
        as_log = appended is not None and (
            table.name in appended
            or (why is not None and publishes_changes and eligibility.logged_only(table))
        )
        if why is not None and table.name in published:
            unpublish.append(why)
            continue
        if why is not None and not as_log:
            if table.name not in excluded_before:
                excluded.append(why)
            continue
        state = recorded.get(table.name)
        listed = appended if as_log and appended is not None else published
        if table.name not in listed:
            again = LOG_PICKED_UP_AGAIN if as_log else PICKED_UP_AGAIN
            if state is None or state in again:
                (add_log if as_log else add).append(table.name)
                followed[table.name] = table.partitions
                if as_log:
                    logs.append(table.name)
            continue
        if as_log:
            logs.append(table.name)
        followed[table.name] = table.partitions
        if seen is None:
            if state in CUT_SHORT:
                reload.append(table.name)
        elif table.partitions - seen.get(table.name, table.partitions):
            reload.append(table.name)
    present = {t.name for t in tables}
    dropped = tuple(sorted(name for name in (seen or {}) if name not in present))
    return Plan(tuple(add), tuple(add_log), tuple(reload), tuple(unpublish), tuple(excluded),
                dropped, followed, tuple(logs))  # fmt: skip


LoadFactory = Callable[[list[TableSchema], str], Backfill]


class SchemaFollower:
    """Keeps the publication equal to the schema's publishable tables (see the module)."""

    def __init__(
        self,
        source_dsn: str,
        settings: Settings,
        catalog: Catalog,
        sink_factory: SinkFactory,
        make_load: LoadFactory,
        quarantine: Callable[[tuple[str, str], CdcError], None],
        log: Any,
    ) -> None:
        self._source_dsn = source_dsn
        self._settings = settings
        self._query = catalog.query
        self._sink_factory = sink_factory
        self._make_load = make_load
        self._quarantine = quarantine
        self._log = log
        self._seen: Mapping[str, frozenset[int]] | None = None
        self._excluded: set[str] | None = None  # None until the first poll
        self._refused: dict[str, SourceTable] = {}  # could not be described, as it was then
        self._warned_logs: set[str] = set()  # append-only logs said to be updated
        self._last_poll = float("-inf")
        self._loads: queue.SimpleQueue[TableSchema | None] = queue.SimpleQueue()
        self._loading: set[str] = set()
        self._loader: threading.Thread | None = None

    # -- polling ---------------------------------------------------------------------------

    def poll_if_due(self) -> None:
        interval = self._settings.schema_poll_interval_s
        if interval and time.monotonic() - self._last_poll >= interval:
            self.poll()

    def poll(self) -> None:
        self._last_poll = time.monotonic()
        settings = self._settings
        try:
            tables, published, appended, options = self._query(self._read)
            listed = published | (appended or set())
            unpublished = [t for t in tables if t.name not in listed]
            recorded = self._recorded() if unpublished or self._seen is None else {}
            first = self._excluded is None
            todo = plan(tables, published, recorded, self._seen, self._excluded or set(),
                        options.publishes_changes, appended)  # fmt: skip
            by_name = {t.name: t for t in tables}
            if first:  # every table streamed is recorded: one taken out later stays out
                for name in listed - set(recorded):
                    self._record(name, TableState.STREAMING, None)
            excluded = self._excluded or set()
            for why in todo.unpublish:
                self._unpublish(why)
                excluded.add(why.table)
            for why in todo.excluded:
                if not first:
                    self._log.warning("table_excluded", table=self._name(why.table),
                                      reason=why.reason, fix=why.fix)  # fmt: skip
                self._record(why.table, TableState.EXCLUDED, f"{why.reason}; fix: {why.fix}")
                excluded.add(why.table)
            self._excluded = {n for n in excluded if n in by_name} - set(todo.seen or {})
            for name in todo.dropped:
                self._log.warning("table_dropped", table=self._name(name),
                                  detail="dropped at the source: its targets are kept")  # fmt: skip
                self._record(
                    name, TableState.DROPPED, "dropped at the source; its targets are kept"
                )
            seen = dict(todo.seen or {})
            for name in todo.add:
                if not self._add(by_name[name]):
                    seen.pop(name, None)
            for name in todo.add_log:
                if not self._add(by_name[name], slots.append_publication(settings.publication)):
                    seen.pop(name, None)
            for name in todo.reload:
                self._reload(name)
            self._seen = seen
            self._watch_logs(todo.logs)
        except psycopg.Error as exc:
            self._log.warning("schema_follow_failed", error=str(exc).strip(),
                              schema=settings.source_schema)  # fmt: skip

    def _read(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[list[SourceTable], set[str], set[str] | None, slots.PublicationOptions]:
        settings = self._settings
        tables = eligibility.source_tables(conn, settings.source_schema)

        def listed(publication: str) -> set[str]:
            return {
                t for s, t in slots.publication_tables(conn, publication)
                if s == settings.source_schema
            }  # fmt: skip

        append = slots.append_publication(settings.publication)
        appended = listed(append) if slots.publication_exists(conn, append) else None
        options = slots.publication_options(conn, settings.publication)
        return tables, listed(settings.publication), appended, options

    def _watch_logs(self, logs: tuple[str, ...]) -> None:
        """Say once per append-only log that it was updated or deleted from at the source:
        those changes are not published, so not replicated."""
        unwarned = [name for name in logs if name not in self._warned_logs]
        if not unwarned:
            return
        params = {"schema": self._settings.source_schema, "tables": unwarned}
        rows = self._query(lambda conn: conn.execute(LOG_CHANGES_SQL, params).fetchall())
        for name, changes in rows:
            self._warned_logs.add(name)
            what, fix = eligibility.changes_not_replicated(self._name(name))
            self._log.warning("append_only_changes_not_replicated", table=self._name(name),
                              updates_and_deletes=changes, detail=what, fix=fix)  # fmt: skip

    def _recorded(self) -> dict[str, str]:
        settings = self._settings
        with psycopg.connect(settings.require_historic_dsn(), autocommit=True) as conn:
            _, states = status.read(conn, settings.historic_schema, settings.slot)
        return {s.table: s.state for s in states}

    def _record(self, table: str, state: TableState, error: str | None) -> None:
        settings = self._settings
        status.record_table(settings.require_historic_dsn(), settings.historic_schema, table,
                            state, error)  # fmt: skip

    def _name(self, table: str) -> str:
        return f"{self._settings.source_schema}.{table}"

    def _alter(self, action: str, table: str, publication: str | None = None) -> None:
        statement = slots.alter_publication_sql(
            publication or self._settings.publication, action, self._settings.source_schema,
            table,
        )  # fmt: skip
        self._query(lambda conn: conn.execute(statement))

    def _unpublish(self, why: Exclusion) -> None:
        """Take the table out at once: while it is published, Postgres refuses its UPDATE
        and DELETE."""
        self._alter("drop", why.table)
        self._log.error("publication_table_removed", table=self._name(why.table),
                        reason=why.reason, fix=why.fix)  # fmt: skip
        self._record(why.table, TableState.EXCLUDED, f"{why.reason}; fix: {why.fix}")

    def _add(self, found: SourceTable, publication: str | None = None) -> bool:
        """Targets, then the publication (default: the main one), then a copy at a snapshot
        taken after it joined."""
        name = found.name
        if self._refused.get(name) == found:
            return False  # refused as it is: tried again once it changes
        schema = self._settings.source_schema
        try:
            table = self._query(lambda conn: describe_table(conn, schema, name))
            self._prepare(table)
        except CdcError as exc:
            # A table the targets cannot hold is set aside; one dropped meanwhile, too.
            gone = exc.kind is ErrorKind.SCHEMA
            if exc.policy.action is not Action.QUARANTINE_TABLE and not gone:
                raise
            self._refused[name] = found
            self._quarantine((schema, name), exc)
            return False
        self._refused.pop(name, None)
        publication = publication or self._settings.publication
        self._alter("add", name, publication)
        self._log.info("table_added", table=self._name(name), publication=publication,
                       append_only=table.append_only)  # fmt: skip
        self._queue_load(table)
        return True

    def _prepare(self, table: TableSchema) -> None:
        """Create the targets with sinks of its own (the apply threads use theirs)."""
        sinks = self._sink_factory()
        try:
            for sink in sinks:
                sink.prepare([table])
        finally:
            for sink in sinks:
                sink.close()

    def _reload(self, name: str) -> None:
        schema = self._settings.source_schema
        table = self._query(lambda conn: describe_table(conn, schema, name))
        self._log.info("table_copied_again", table=self._name(name),
                       reason="new partitions, or a copy cut short")  # fmt: skip
        self._queue_load(table)

    # -- loading ---------------------------------------------------------------------------

    def _queue_load(self, table: TableSchema) -> None:
        if not self._settings.initial_load:
            self._log.info("table_streamed_without_copy", table=table.qualified_name,
                           hint=f"initial_load is off: `cdc backfill {table.name}`")  # fmt: skip
            return
        if table.name in self._loading:
            return
        self._loading.add(table.name)
        if self._loader is None:
            self._loader = threading.Thread(target=self._load_all, name="cdc-table-load",
                                            daemon=True)  # fmt: skip
            self._loader.start()
        self._loads.put(table)

    def _load_all(self) -> None:
        while (table := self._loads.get()) is not None:
            try:
                self._load(table)
            except (CdcError, psycopg.Error) as exc:
                hint = f"restart the daemon, or `cdc backfill {table.name}`"
                self._log.error("table_load_failed", table=table.qualified_name,
                                error=str(exc).strip(), hint=hint)  # fmt: skip
            finally:
                self._loading.discard(table.name)

    def _load(self, table: TableSchema) -> None:
        job = f"table_{table.name}_{uuid.uuid4().hex[:8]}"
        with exported_snapshot(self._source_dsn) as snapshot:
            self._log.info("table_load_started", table=table.qualified_name,
                           snapshot_lsn=str(snapshot.lsn))  # fmt: skip
            progress = self._make_load([table], job).run(snapshot)
        for name, reason in progress.failed.items():
            self._quarantine((table.schema, name), CdcError(ErrorKind.VALUE_OUT_OF_RANGE, reason))
        self._log.info("table_load_done", table=table.qualified_name, rows=progress.rows)

    def close(self) -> None:
        """Stop the loader after the copy in progress (a copy still running after
        `LOAD_JOIN_S` is left: it is copied again at the next start)."""
        if self._loader is None:
            return
        self._loads.put(None)
        self._loader.join(timeout=LOAD_JOIN_S)
        if self._loader.is_alive():
            self._log.warning("table_load_abandoned", tables=sorted(self._loading))
        self._loader = None
