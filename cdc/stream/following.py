"""Follow the source schema while streaming: tables created, dropped, or partitioned further.

Every few seconds the daemon's main loop calls `SchemaFollower.poll`, which compares the
source schema's tables with the publication (`cdc.stream.followplan.plan`, a pure
function) and acts:

- a new table that may be published (`cdc.stream.eligibility`) gets its targets, is added
  to the publication, and its existing rows are copied in the background
  (`cdc.stream.tableload`) at a fresh exported snapshot, taken after the table joined the
  publication (DESIGN.md invariant 3: every change streamed from then on has a higher
  version than the copy). "New" means: not in the publication and never replicated before
  (no state recorded, or recorded as excluded, dropped, or being copied:
  `cdc.stream.followplan.PICKED_UP_AGAIN`), so a table taken out with
  `cdc publication drop-table` stays out;
- a published table whose UPDATE and DELETE Postgres would refuse (its primary key was
  dropped) leaves the publication at once (invariant 7), and is added again when fixed;
- a table that may not be published is logged once with the statement that fixes it;
- a partitioned table that gained partitions is copied again (rows of an attached
  partition were never streamed; the copy is versioned, so it overwrites nothing newer);
  one that lost partitions (detached or dropped) or had one truncated by itself is copied
  whole, replacing what its targets hold (those rows left without a change streamed);
- a table whose rows changed without changes being streamed for them (a column renamed,
  or dropped and added again; a rewrite that added or retyped columns:
  `cdc.stream.followplan.reshaped`) is copied again at a fresh snapshot;
- a dropped table stops with a log line; its targets are kept;
- a change of the publication that another session's lock on the table holds up is tried
  again at the next look (the stream stands still while the daemon waits for a lock);
- a name that stands for another table than at the last look (renamed into it, dropped
  and made again, swapped; also while the daemon was stopped: the names followed are
  recorded with their tables' OIDs in historic's `_cdc_followed`) is copied whole at a
  fresh snapshot, replacing what its targets hold.

A table without a usable replica identity is followed the same way through the append
publication (`publications.append_publication`: inserts and truncates only), as an append-only
log; once it is seen updated or deleted from at the source (`pg_stat_user_tables`), the
daemon says once that those changes are not replicated and how to fix it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import psycopg

from cdc.describe import describe_table
from cdc.errors import Action, CdcError, ErrorKind, backfill_command
from cdc.ops.settings import Settings
from cdc.schema import TableSchema
from cdc.sinks.factory import SinkFactory
from cdc.states import TableState
from cdc.stream import eligibility, publications
from cdc.stream.catalog import Catalog
from cdc.stream.eligibility import Exclusion, Shape, SourceTable
from cdc.stream.followplan import Plan, plan
from cdc.stream.followrecords import FollowRecords
from cdc.stream.publishing import PublicationEditor
from cdc.stream.tableload import TableLoader

LOG_CHANGES_SQL = """
SELECT relname, n_tup_upd + n_tup_del FROM pg_stat_user_tables
WHERE schemaname = %(schema)s AND relname = ANY(%(tables)s) AND n_tup_upd + n_tup_del > 0
"""


class SchemaFollower:
    """Keeps the publication equal to the schema's publishable tables (see the module)."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        sink_factory: SinkFactory,
        loader: TableLoader,
        quarantine: Callable[[tuple[str, str], CdcError], None],
        quarantined: Callable[[], Mapping[tuple[str, str], str]],
        log: Any,
    ) -> None:
        self._settings = settings
        self._query = catalog.query
        self._sink_factory = sink_factory
        self._quarantine = quarantine
        self._quarantined = quarantined
        self._log = log
        self._seen: Mapping[str, frozenset[int]] | None = None
        self._oids: Mapping[str, int] | None = None
        self._shapes: Mapping[str, Shape] | None = None
        self._excluded: set[str] | None = None  # None until the first poll
        self._refused: dict[str, SourceTable] = {}  # could not be described, as it was then
        self._warned_logs: set[str] = set()  # append-only logs said to be updated
        self._last_poll = float("-inf")
        self._loader = loader
        self._records = FollowRecords(settings)
        self._editor = PublicationEditor(settings, catalog.query, log)

    # -- polling ---------------------------------------------------------------------------

    def poll_if_due(self) -> None:
        interval = self._settings.schema_poll_interval_s
        if interval and time.monotonic() - self._last_poll >= interval:
            self.poll()

    def poll(self) -> None:
        self._last_poll = time.monotonic()
        try:
            self._follow()
        except psycopg.Error as exc:
            self._log.warning("schema_follow_failed", error=str(exc).strip(),
                              schema=self._settings.source_schema)  # fmt: skip

    def _follow(self) -> None:
        tables, published, appended, options = self._query(self._read)
        listed = published | (appended or set())
        unpublished = [t for t in tables if t.name not in listed]
        recorded = self._records.states() if unpublished or self._seen is None else {}
        first = self._excluded is None
        if self._oids is not None and self._shapes is not None:
            oids, shapes = self._oids, self._shapes
        else:
            oids, shapes = self._records.followed()
        rebuilt = self._records.rebuilt(recorded, listed) if first else set()
        todo = plan(tables, published, recorded, self._seen, self._excluded or set(),
                    options.publishes_changes, appended, oids, shapes, rebuilt)  # fmt: skip
        by_name = {t.name: t for t in tables}
        if first:  # every table streamed is recorded: one taken out later stays out
            for name in listed - set(recorded):
                self._records.record(name, TableState.STREAMING, None)
        self._exclude(todo, first, by_name)
        self._forget_dropped(todo)
        seen, new_oids = dict(todo.seen or {}), dict(todo.oids or {})
        new_shapes = dict(todo.shapes or {})
        append = publications.append_publication(self._settings.publication)
        for name, publication in [*((n, None) for n in todo.add),
                                  *((n, append) for n in todo.add_log)]:  # fmt: skip
            if not self._add(by_name[name], publication):
                for followed in (seen, new_oids, new_shapes):
                    followed.pop(name, None)
        reasons = todo.why or {}
        for name in (*todo.reload, *todo.reshaped):
            self._reload(name, reasons[name])
        for name in (*todo.recopy, *todo.shrunk):  # whole: their targets hold rows no
            self._reload(name, reasons[name], replaces=True)  # longer at the source
        if new_oids != oids or new_shapes != shapes:
            self._records.update_followed(oids, shapes, new_oids, new_shapes)
        self._seen, self._oids, self._shapes = seen, new_oids, new_shapes
        self._watch_logs(todo.logs)

    def _exclude(self, todo: Plan, first: bool, present: Collection[str]) -> None:
        """Take out the published tables that may not be published any more, and record
        (and, after the first look, say) the new ones that may not be."""
        excluded = self._excluded or set()
        for why in todo.unpublish:
            if self._unpublish(why):
                excluded.add(why.table)
        for why in todo.excluded:
            if not first:
                self._log.warning("table_excluded", table=self._name(why.table),
                                  reason=why.reason, fix=why.fix)  # fmt: skip
            self._records.record(why.table, TableState.EXCLUDED, f"{why.reason}; fix: {why.fix}")
            excluded.add(why.table)
        self._excluded = {n for n in excluded if n in present} - set(todo.seen or {})

    def _forget_dropped(self, todo: Plan) -> None:
        renamed = todo.renamed or {}
        for name in todo.dropped:
            detail = (f"renamed to {self._name(renamed[name])} at the source: its targets "
                      "under the old name are kept" if name in renamed
                      else "dropped at the source: its targets are kept")  # fmt: skip
            event = "table_renamed" if name in renamed else "table_dropped"
            self._log.warning(event, table=self._name(name), detail=detail)
            self._records.record(name, TableState.DROPPED, detail)

    def _read(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[list[SourceTable], set[str], set[str] | None, publications.PublicationOptions]:
        settings = self._settings
        tables = eligibility.source_tables(conn, settings.source_schema)

        def listed(publication: str) -> set[str]:
            return {
                t for s, t in publications.publication_tables(conn, publication)
                if s == settings.source_schema
            }  # fmt: skip

        append = publications.append_publication(settings.publication)
        appended = listed(append) if publications.publication_exists(conn, append) else None
        options = publications.publication_options(conn, settings.publication)
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

    def _name(self, table: str) -> str:
        return f"{self._settings.source_schema}.{table}"

    def _unpublish(self, why: Exclusion) -> bool:
        """Take the table out at once: while it is published, Postgres refuses its UPDATE
        and DELETE. False while the table is locked (`PublicationEditor.alter`)."""
        if not self._editor.alter("drop", why.table):
            return False
        self._log.error("publication_table_removed", table=self._name(why.table),
                        reason=why.reason, fix=why.fix)  # fmt: skip
        self._records.record(why.table, TableState.EXCLUDED, f"{why.reason}; fix: {why.fix}")
        return True

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
            if found.unusable and exc.kind is ErrorKind.TABLE_CHANGED:
                self._exclude_unkeyed(name)
            else:
                self._quarantine((schema, name), exc)
            return False
        self._refused.pop(name, None)
        publication = publication or self._settings.publication
        # Its targets may hold the rows of a table that had its name before. Due before it
        # is published: a daemon stopped in between picks it up at its next start.
        due = self._copy_due(table, replaces=True)
        if not self._editor.alter("add", name, publication):
            return False  # due, as `replacing`: picked up again at the next look or start
        self._log.info("table_added", table=self._name(name), publication=publication,
                       append_only=table.append_only)  # fmt: skip
        if due:
            self._loader.queue(table, replaces=True)
        return True

    def _exclude_unkeyed(self, name: str) -> None:
        """A table that lost its key, whose targets are keyed by it: not replicated (an
        append-only log needs targets of its own) until its key is back, when it is picked
        up again and copied whole (the changes made meanwhile included)."""
        reason = (
            "it has no primary key now, and its targets are keyed by the one it had: it is "
            "not replicated until its key is back (then it is copied whole, replacing what "
            "its targets hold)"
        )
        fix = (
            f"ALTER TABLE {self._name(name)} ADD PRIMARY KEY (...); or, to replicate it as an "
            f"append-only log, stop the daemon, `cdc rebuild {name}`, start it"
        )
        self._log.warning("table_excluded", table=self._name(name), reason=reason, fix=fix)
        self._records.record(name, TableState.EXCLUDED, f"{reason}; fix: {fix}")

    def _prepare(self, table: TableSchema) -> None:
        """Create the targets with sinks of its own (the apply threads use theirs)."""
        sinks = self._sink_factory()
        try:
            for sink in sinks:
                sink.prepare([table])
        finally:
            for sink in sinks:
                sink.close()

    def _reload(self, name: str, reason: str, replaces: bool = False) -> None:
        schema = self._settings.source_schema
        table = self._query(lambda conn: describe_table(conn, schema, name))
        self._log.info("table_copied_again", table=self._name(name), reason=reason)
        self._queue_load(table, replaces)

    # -- loading ---------------------------------------------------------------------------

    def _queue_load(self, table: TableSchema, replaces: bool = False) -> None:
        """Copy `table` in the background; `replaces`: the copy replaces every row its
        targets hold (they may hold another table's of the same name)."""
        if self._copy_due(table, replaces):
            self._loader.queue(table, replaces)

    def _copy_due(self, table: TableSchema, replaces: bool) -> bool:
        """Record `table`'s copy as due (`replaces`: replacing), before anything else: a
        daemon stopped before the copy began (its queue is in memory) copies it at its next
        start. False, said in the log, when no copy is to be made."""
        if (table.schema, table.name) in self._quarantined():
            # Its targets cannot take its rows until the fix its quarantine names is made
            # (and the daemon restarted); a copy would fail, and hide that state.
            self._log.info("table_copy_skipped", table=table.qualified_name,
                           reason="set aside: `cdc status` names the fix")  # fmt: skip
            return False
        if not self._settings.initial_load:
            self._log.info("table_streamed_without_copy", table=table.qualified_name,
                           hint=f"initial_load is off: {backfill_command(table.name)}")  # fmt: skip
            return False
        self._records.record(table.name, TableState.REPLACING if replaces else TableState.COPYING,
                     None)  # fmt: skip
        return True

    def close(self) -> None:
        """Stop copying tables after the copy in progress (`TableLoader.close`)."""
        self._loader.close()
