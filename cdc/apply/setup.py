"""Before the daemon streams: what it needs is created if missing (publications, the
targets, the slot), with a log line for each, and the tables' existing rows are loaded once
(the initial load, at the slot's snapshot). Retried while the source or a target is still
starting, for up to `connect_timeout_s`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from cdc.apply.quarantine import Quarantine
from cdc.describe import describe_table
from cdc.errors import Action, CdcError, ErrorKind
from cdc.load.backfill import Backfill
from cdc.load.workers import Progress as BackfillProgress
from cdc.ops import faults, preflight
from cdc.ops.metrics import Metrics
from cdc.ops.settings import Settings, redact_url
from cdc.retry import Backoff, retryable, retrying
from cdc.schema import TableSchema
from cdc.sinks.base import Sink
from cdc.sinks.factory import SinkFactory
from cdc.stream import eligibility, publications, slots
from cdc.stream.session import canonical_dsn
from cdc.stream.slotcheck import PendingCheck
from cdc.stream.snapshot import Snapshot, SnapshotSource, exported_snapshot, raced_relations

INITIAL_LOAD_JOB = "initial"
# What describing a table may raise that sets that table aside while the others go on.
DESCRIBE_QUARANTINES = (
    ErrorKind.SCHEMA,
    ErrorKind.NO_KEY,
    ErrorKind.UNSUPPORTED_TYPE,
    ErrorKind.UNSUPPORTED_TABLE,
)


class Setup:
    def __init__(
        self,
        settings: Settings,
        sinks: list[Sink],
        sink_factory: SinkFactory,
        quarantine: Quarantine,
        metrics: Metrics,
        log: Any,
        stopping: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.source_dsn = settings.require_source_dsn()
        self.sinks = sinks
        self.sink_factory = sink_factory
        self.log = log
        self.metrics = metrics
        self._quarantine = quarantine
        self._stopping = stopping
        self._preflight_logged = False
        self._backfill_rows_seen = 0
        # The publications the slot streams (known once `run` has looked).
        self.publications: tuple[str, ...] = (settings.publication,)

    def connect_source(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(canonical_dsn(self.source_dsn), autocommit=True)
        except psycopg.Error as exc:
            raise CdcError(
                ErrorKind.SOURCE_CONNECTION,
                f"cannot connect to the source {redact_url(self.source_dsn)}: "
                f"{redact_url(str(exc).strip())}",
            ) from exc

    def run(self) -> None:
        """Create what is missing: publication, targets, slot; load existing rows once."""
        settings = self.settings
        with self.connect_source() as conn:
            preflight.check_source(conn)
            self._ensure_publication(conn)
            slot_exists = slots.get_slot(conn, settings.slot) is not None
            appended = self._ensure_append_publication(conn, slot_exists)
            self._log_preflight(conn, appended)
            tables = self._published_schemas(conn)
            self.publications = self._streamed_publications(conn)
        for sink in self.sinks:
            sink.prepare([])  # reach every sink now: an unreachable one fails the start
        tables = [t for t in tables if self._prepared(t)]
        self.log.info("targets_ready", tables=[t.qualified_name for t in tables])
        load = self.initial_load(tables)
        check = PendingCheck(settings.require_historic_dsn(), settings.historic_schema,
                             settings.slot)  # fmt: skip
        if slot_exists and self._raced_at_creation(check):
            slot_exists = False
            if settings.initial_load:
                load.register()
                load.restart()  # copied at the dropped slot's snapshot: copy all again
        if not slot_exists and settings.initial_load:
            # Recorded before the slot exists: a daemon killed between creating the slot and
            # starting the copy resumes the copy at its next start instead of skipping it.
            load.register()
        if not slot_exists:
            with exported_snapshot(self.source_dsn, slot=settings.slot, check=check) as snapshot:
                self.log.info("slot_created", lsn=str(snapshot.lsn))
                faults.point("after_slot_created")
                if settings.initial_load:
                    self._run_load(load, snapshot)
        elif settings.initial_load and load.unfinished():
            load.restart_unfinished()  # one snapshot per table (`Backfill.restart_unfinished`)
            # Replacing: the stream replays from the slot's start, older than this snapshot,
            # and may bring back rows that left the table since without a change (a
            # partition truncated by itself, detached): they fall below the copy's
            # truncate watermark. (The schema follower tells that apart by the table as the
            # copy at the slot's snapshot recorded it; the daemon stopped before that.)
            resumed = self.initial_load(tables, replaces=True)
            with exported_snapshot(self.source_dsn) as snapshot:
                self.log.info("initial_load_resumed", snapshot_lsn=str(snapshot.lsn))
                self._run_load(resumed, snapshot)

    def _ensure_publication(self, conn: psycopg.Connection[Any]) -> None:
        """Create the publications, or bring the existing one in line with the schema."""
        settings = self.settings
        if not publications.publication_exists(conn, settings.publication):
            published, logs, _ = publications.create_publication(
                conn, settings.publication, settings.source_schema
            )
            self.log.info("publication_created", publication=settings.publication, tables=published)
            self.log.info("publication_created", publish="insert, truncate",
                          publication=publications.append_publication(settings.publication),
                          tables=logs)  # fmt: skip
            return
        for repair in publications.repair_publication(
            conn, settings.publication, settings.source_schema
        ):
            self.log.warning(repair.event, publication=settings.publication,
                             table=repair.table, detail=repair.detail)  # fmt: skip

    def _log_preflight(self, conn: psycopg.Connection[Any], appended: bool) -> None:
        """The source's findings, once per start (not on every setup retry); `appended`:
        False if the publication of append-only logs is missing (`_log_append_missing`)."""
        if self._preflight_logged:
            return
        settings = self.settings
        self._preflight_logged = True
        for finding in preflight.source_findings(
            conn, settings.publication, settings.source_schema, settings.slot
        ):
            self.log.warning("preflight", check=finding.check, hint=finding.message)
        if not appended:
            self._log_append_missing(conn)

    def _raced_at_creation(self, check: PendingCheck) -> bool:
        """True (and the slot dropped) if a daemon was stopped while creating the slot, before
        checking it, and it raced a table rewrite (`cdc.stream.snapshot`): the slot never
        streamed, so it is made again."""
        next_xid = check.pending()
        if next_xid is None:
            return False
        raced = raced_relations(self.source_dsn, next_xid)
        if raced:
            self.log.warning(
                "slot_creation_raced", relations=raced[:10],
                hint="the slot was made by a daemon stopped before checking it, while "
                "relations were rewritten; it cannot decode their changes: made again",
            )  # fmt: skip
            with self.connect_source() as conn:
                slots.drop_slot(conn, self.settings.slot, force=True)
        check.clear()
        return bool(raced)

    def _ensure_append_publication(self, conn: psycopg.Connection[Any], slot_exists: bool) -> bool:
        """Create the publication of the append-only logs if it is missing, unless the slot
        exists already: Postgres 15's pgoutput cannot decode WAL older than a publication it
        is asked for, so a slot made without it keeps the keyless tables excluded. False if
        the publication is missing."""
        settings = self.settings
        append = publications.append_publication(settings.publication)
        if publications.publication_exists(conn, append):
            return True
        if slot_exists:
            return False
        tables = publications.create_append_publication(conn, settings.publication,
                                                        settings.source_schema)  # fmt: skip
        self.log.info("publication_created", publication=append, tables=tables,
                      publish="insert, truncate")  # fmt: skip
        return True

    def _log_append_missing(self, conn: psycopg.Connection[Any]) -> None:
        """A warning naming the keyless tables that are not replicated, or, when the schema
        has none, a note that one made later will not be."""
        append = publications.append_publication(self.settings.publication)
        _, logs, _ = eligibility.classify(
            eligibility.source_tables(conn, self.settings.source_schema)
        )
        fix = (
            f"stop the daemon; CREATE PUBLICATION {append} WITH "
            f"({publications.INSERTS_ONLY.as_string(None)}); `cdc slot recreate`; start; then "
            "`cdc backfill`"
        )
        if logs:
            self.log.warning(
                "append_publication_missing", publication=append,
                tables=[t.qualified for t in logs],
                detail="these tables have no key and are not replicated: the slot predates "
                "the publication of append-only logs", fix=fix,
            )  # fmt: skip
        else:
            self.log.info(
                "append_publication_missing", publication=append,
                detail="no table of the schema lacks a key; one made later will not be "
                "replicated: the slot predates the publication of append-only logs", fix=fix,
            )  # fmt: skip

    def _streamed_publications(self, conn: psycopg.Connection[Any]) -> tuple[str, ...]:
        """The publications the slot streams: the main one, and the append one if it exists."""
        append = publications.append_publication(self.settings.publication)
        extra = (append,) if publications.publication_exists(conn, append) else ()
        return (self.settings.publication, *extra)

    def _prepared(self, table: TableSchema) -> bool:
        """Create the table's targets; a table they cannot hold is quarantined."""
        try:
            for sink in self.sinks:
                sink.prepare([table])
        except CdcError as exc:
            if exc.policy.action is not Action.QUARANTINE_TABLE:
                raise
            self._quarantine.add((table.schema, table.name), exc)
            return False
        return True

    def initial_load(
        self,
        tables: list[TableSchema],
        job: str = INITIAL_LOAD_JOB,
        replaces: bool = False,
        snapshots: SnapshotSource | None = None,
    ) -> Backfill:
        settings = self.settings
        return Backfill(
            self.source_dsn,
            settings.require_historic_dsn(),
            settings.historic_schema,
            job,
            tables,
            self.sink_factory,
            chunk_size=settings.backfill_chunk_size,
            workers=settings.backfill_workers,
            batch_bytes=settings.backfill_batch_mb << 20,
            on_progress=self._backfill_progress,
            replaces=replaces,
            publications=self.publications,
            snapshots=snapshots,
        )

    def _backfill_progress(self, progress: BackfillProgress) -> None:
        if progress.rows < self._backfill_rows_seen:  # another load (a table added)
            self._backfill_rows_seen = 0
        self.metrics.backfill_rows.inc(progress.rows - self._backfill_rows_seen)
        self._backfill_rows_seen = progress.rows
        self.metrics.backfill_chunks_left.set(progress.total_chunks - progress.done_chunks)

    def _run_load(self, load: Backfill, snapshot: Snapshot) -> None:
        self._backfill_rows_seen = 0
        self.log.info("initial_load_started", snapshot_lsn=str(snapshot.lsn))
        progress = load.run(snapshot)
        for table, reason in progress.failed.items():
            schema = load.tables[table].schema
            self._quarantine.add((schema, table), CdcError(ErrorKind.VALUE_OUT_OF_RANGE, reason))
        self.log.info(
            "initial_load_done", rows=progress.rows, chunks=progress.done_chunks,
            rows_per_s=round(progress.rows_per_s),
        )  # fmt: skip

    def _published_schemas(self, conn: psycopg.Connection[Any]) -> list[TableSchema]:
        found = []
        for schema, name in publications.replicated_tables(conn, self.settings.publication):
            try:
                found.append(describe_table(conn, schema, name))
            except CdcError as exc:
                if exc.kind not in DESCRIBE_QUARANTINES:
                    raise
                self._quarantine.add((schema, name), exc)
        return found

    def until_done(self) -> None:
        """`run`, retried with backoff while it fails on something transient (a target or
        the source restarting as the daemon starts) for up to `connect_timeout_s`; anything
        else, or failing for longer, stops the daemon."""
        limit = self.settings.connect_timeout_s
        backoff = Backoff(max_s=self.settings.max_retry_delay_s, give_up_after_s=limit)

        def on_retry(_exc: BaseException, _delay: float) -> None:
            for sink in self.sinks:  # they reconnect on their next use
                sink.close()

        try:
            for attempt in retrying(
                "setup_retry",
                backoff,
                stopping=self._stopping,
                on_retry=on_retry,
                slot=self.settings.slot,
            ):
                with attempt:
                    self._once()
        except CdcError as exc:
            if retryable(exc) and not self._stopping():
                raise CdcError(exc.kind, f"{exc} (gave up after {limit:.0f} s)") from exc
            raise

    def _once(self) -> None:
        """`run`; a connection lost on the way (the initial load's own connections raise
        psycopg's errors) is a source connection failure, retried like the others."""
        try:
            self.run()
        except psycopg.OperationalError as lost:
            raise CdcError(
                ErrorKind.SOURCE_CONNECTION,
                f"a connection failed during setup: {redact_url(str(lost).strip())}",
            ) from lost
