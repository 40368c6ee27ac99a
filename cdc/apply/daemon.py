"""The daemon: ordered, versioned apply of one slot to the historic schema and ClickHouse.

On start it creates what is missing (publication for the source schema's tables, slot,
target schema) with a log line for each, then streams: committed transactions are folded
into batches (by size and age), each batch is applied to the historic sink, then to
ClickHouse, and only then acknowledged, so the flush LSN reported to Postgres never passes
what both sinks hold durably (DESIGN.md invariant 5). A stop request drains the current
batch, acknowledges it and returns.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from cdc.apply.applier import Applier, Stage
from cdc.apply.assembler import Event
from cdc.apply.batch import Batch, BatchBuilder
from cdc.apply.changes import Transaction
from cdc.check.monitor import Monitor
from cdc.check.position import TargetPosition
from cdc.errors import Action, CdcError, ErrorKind
from cdc.load.backfill import Backfill
from cdc.load.backfill import Progress as BackfillProgress
from cdc.ops import faults, preflight, status
from cdc.ops.freshness import FreshnessRecorder
from cdc.ops.leader import Leadership
from cdc.ops.logs import get_logger
from cdc.ops.metrics import HealthState, Metrics, serve
from cdc.ops.settings import Settings, redact_url
from cdc.protocol import LogicalMessage, Relation, datetime_to_pg_timestamp
from cdc.protocol.lsn import Lsn
from cdc.retry import Backoff, retryable, retrying
from cdc.schema import TableSchema, describe_table
from cdc.sinks.base import Layouts, Sink
from cdc.sinks.clickhouse.client import embedded_path
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.factory import SinkFactory, default_sinks
from cdc.states import DaemonState, TableState
from cdc.stream import feedback, slots
from cdc.stream.catalog import Catalog
from cdc.stream.following import SchemaFollower
from cdc.stream.session import canonical_dsn
from cdc.stream.slotcheck import PendingCheck
from cdc.stream.snapshot import Snapshot, exported_snapshot, raced_relations
from cdc.stream.source import ChangeSource, SourceConfig


@dataclass
class Stats:
    transactions: int = 0
    changes: int = 0
    batches: int = 0
    skipped: int = 0
    applied_lsn: Lsn = Lsn.ZERO
    errors: dict[str, int] = field(default_factory=dict)
    # Seconds from commit at the source to durable in every sink, per transaction.
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


INITIAL_LOAD_JOB = "initial"
# What describing a table may raise that sets that table aside while the others go on.
DESCRIBE_QUARANTINES = (ErrorKind.SCHEMA, ErrorKind.NO_KEY, ErrorKind.UNSUPPORTED_TYPE)
HEARTBEAT_PREFIX = "cdc_heartbeat"


class Daemon:
    def __init__(self, settings: Settings, sink_factory: SinkFactory | None = None) -> None:
        self.settings = settings
        self.source_dsn = settings.require_source_dsn()
        self.log = get_logger(slot=settings.slot)
        self.sink_factory = sink_factory or default_sinks(settings)
        self.sinks: list[Sink] = self.sink_factory()
        self.stats = Stats()
        self.streaming = threading.Event()  # set once replication has started
        self.metrics = Metrics()
        self.position = TargetPosition()  # what both targets hold: LSN and commit time
        self.metrics.freshness.set_function(self.position.freshness)
        self.health = HealthState(settings.ready_max_lag_s)
        self._stop: threading.Event | None = None
        self.catalog = Catalog(self._connect_source, settings.max_retry_delay_s, self._stopping)
        # Tables set aside, with why: written by the apply threads and the main thread.
        self._quarantined: dict[tuple[str, str], str] = {}
        self._quarantine_lock = threading.Lock()
        self._last_progress = time.monotonic()
        self._preflight_logged = False
        self._last_event_at = time.monotonic()
        self._backfill_rows_seen = 0
        self._last_progress_changes = 0
        # Batches between the applier's stages: when the first began, and their layouts.
        self._in_flight: dict[int, tuple[float, Layouts]] = {}
        self._publications: tuple[str, ...] = (settings.publication,)  # streamed (setup)
        self.follower = SchemaFollower(self.source_dsn, settings, self.catalog,
                                       self.sink_factory, self._initial_load, self._quarantine,
                                       self.log)  # fmt: skip

    # -- setup -----------------------------------------------------------------------------

    def _connect_source(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(canonical_dsn(self.source_dsn), autocommit=True)
        except psycopg.Error as exc:
            raise CdcError(
                ErrorKind.SOURCE_CONNECTION,
                f"cannot connect to the source {redact_url(self.source_dsn)}: "
                f"{redact_url(str(exc).strip())}",
            ) from exc

    def setup(self) -> None:
        """Create what is missing: publication, targets, slot; load existing rows once."""
        settings = self.settings
        with self._connect_source() as conn:
            preflight.check_wal_level(conn)
            if not slots.publication_exists(conn, settings.publication):
                published, logs, _ = slots.create_publication(
                    conn, settings.publication, settings.source_schema
                )
                self.log.info(
                    "publication_created", publication=settings.publication, tables=published
                )
                self.log.info("publication_created", publish="insert, truncate",
                              publication=slots.append_publication(settings.publication),
                              tables=logs)  # fmt: skip
            else:
                for repair in slots.repair_publication(
                    conn, settings.publication, settings.source_schema
                ):
                    self.log.warning(repair.event, publication=settings.publication,
                                     table=repair.table, detail=repair.detail)  # fmt: skip
            slot_exists = slots.get_slot(conn, settings.slot) is not None
            self._ensure_append_publication(conn, slot_exists)
            findings = preflight.source_findings(conn, settings.publication, settings.source_schema)
            if not self._preflight_logged:  # once per start, not on every setup retry
                self._preflight_logged = True
                for finding in findings:
                    self.log.warning("preflight", check=finding.check, hint=finding.message)
            tables = self._published_schemas(conn)
            self._publications = self._streamed_publications(conn)
        for sink in self.sinks:
            sink.prepare([])  # reach every sink now: an unreachable one fails the start
        tables = [t for t in tables if self._prepared(t)]
        self.log.info("targets_ready", tables=[t.qualified_name for t in tables])
        load = self._initial_load(tables)
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
            with exported_snapshot(self.source_dsn) as snapshot:
                self.log.info("initial_load_resumed", snapshot_lsn=str(snapshot.lsn))
                self._run_load(load, snapshot)

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
            with self._connect_source() as conn:
                slots.drop_slot(conn, self.settings.slot, force=True)
        check.clear()
        return bool(raced)

    def _ensure_append_publication(self, conn: psycopg.Connection[Any], slot_exists: bool) -> None:
        """Create the publication of the append-only logs if it is missing, unless the slot
        exists already: Postgres 15's pgoutput cannot decode WAL older than a publication it
        is asked for, so a slot made without it keeps the keyless tables excluded."""
        settings = self.settings
        append = slots.append_publication(settings.publication)
        if slots.publication_exists(conn, append):
            return
        if slot_exists:
            self.log.warning(
                "append_publication_missing", publication=append,
                detail="tables without a key are not replicated: the slot predates the "
                "publication of append-only logs",
                fix=f"stop the daemon; CREATE PUBLICATION {append} WITH "
                f"({slots.INSERTS_ONLY.as_string(None)}); `cdc slot recreate`; start; then "
                "`cdc backfill`",
            )  # fmt: skip
            return
        tables = slots.create_append_publication(conn, settings.publication,
                                                 settings.source_schema)  # fmt: skip
        self.log.info("publication_created", publication=append, tables=tables,
                      publish="insert, truncate")  # fmt: skip

    def _streamed_publications(self, conn: psycopg.Connection[Any]) -> tuple[str, ...]:
        """The publications the slot streams: the main one, and the append one if it exists."""
        append = slots.append_publication(self.settings.publication)
        extra = (append,) if slots.publication_exists(conn, append) else ()
        return (self.settings.publication, *extra)

    def _prepared(self, table: TableSchema) -> bool:
        """Create the table's targets; a table they cannot hold is quarantined."""
        try:
            for sink in self.sinks:
                sink.prepare([table])
        except CdcError as exc:
            if exc.policy.action is not Action.QUARANTINE_TABLE:
                raise
            self._quarantine((table.schema, table.name), exc)
            return False
        return True

    def _initial_load(self, tables: list[TableSchema], job: str = INITIAL_LOAD_JOB) -> Backfill:
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
            self._quarantine((schema, table), CdcError(ErrorKind.VALUE_OUT_OF_RANGE, reason))
        self.log.info(
            "initial_load_done", rows=progress.rows, chunks=progress.done_chunks,
            rows_per_s=round(progress.rows_per_s),
        )  # fmt: skip

    def _published_schemas(self, conn: psycopg.Connection[Any]) -> list[TableSchema]:
        found = []
        for schema, name in slots.replicated_tables(conn, self.settings.publication):
            try:
                found.append(describe_table(conn, schema, name))
            except CdcError as exc:
                if exc.kind not in DESCRIBE_QUARANTINES:
                    raise
                self._quarantine((schema, name), exc)
        return found

    @property
    def quarantined(self) -> dict[tuple[str, str], str]:
        """The quarantined tables and why (a copy: safe from any thread)."""
        with self._quarantine_lock:
            return dict(self._quarantined)

    def _quarantine(self, name: tuple[str, str], exc: CdcError) -> None:
        with self._quarantine_lock:
            self._quarantined[name] = str(exc)
        status.record_table(self.settings.require_historic_dsn(), self.settings.historic_schema,
                            name[1], TableState.QUARANTINED, str(exc))  # fmt: skip
        self.log.error(
            "table_quarantined", table=f"{name[0]}.{name[1]}", error=str(exc),
            hint=exc.policy.hint,
        )  # fmt: skip

    def key_positions(self, relation: Relation) -> tuple[int, ...] | None:
        name = (relation.namespace, relation.name)
        with self._quarantine_lock:
            if name in self._quarantined:
                return None
        try:
            return self.catalog.schema_for(relation).key_indexes
        except CdcError as exc:
            if exc.kind not in DESCRIBE_QUARANTINES:
                raise
            self._quarantine(name, exc)
            return None

    # -- streaming -------------------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Apply to every sink, then record the batch as applied (the applier's stages,
        one after the other on the calling thread)."""
        for stage in self.stages():
            stage(batch)

    def stages(self) -> list[Stage]:
        """The applier's pipeline: the batch completed from the historic copy (values the
        stream did not resend) and applied to historic, then the other sinks and the
        bookkeeping of a batch that every sink holds. Completion comes first in the first
        stage: the historic copy is read before this batch, and after every earlier one,
        is written to it. Each stage retries transient failures with backoff (re-applying is
        harmless); a table whose rows cannot be stored is quarantined and the batch
        applied without it; anything else stops the daemon."""
        return [self._apply_historic, self._apply_others]

    def _apply_historic(self, batch: Batch) -> None:
        started = time.monotonic()
        layouts: Layouts = {name: self.catalog.layout(t) for name, t in batch.tables.items()}
        self._in_flight[id(batch)] = (started, layouts)

        def write(batch: Batch) -> None:
            faults.point("before_historic")
            # Every value decided before any sink sees the batch (the historic copy holds
            # the rows as the batch found them: nothing after this stage has written yet).
            self.sinks[0].complete(batch, layouts)
            self.sinks[0].apply(batch, layouts)
            faults.point("after_historic")

        self._with_retries(batch, self.sinks[:1], write)

    def _apply_others(self, batch: Batch) -> None:
        started, layouts = self._in_flight.pop(id(batch))

        def write(batch: Batch) -> None:
            for sink in self.sinks[1:]:
                faults.point("before_clickhouse")
                sink.apply(batch, layouts)
            faults.point("after_clickhouse")

        self._with_retries(batch, self.sinks[1:], write)
        self._record_applied(batch, time.monotonic() - started)

    def _with_retries(
        self, batch: Batch, sinks: Sequence[Sink], write: Callable[[Batch], None]
    ) -> None:
        """`write(batch)`, retried while it fails on something transient (`cdc.retry`),
        without the tables whose rows cannot be stored (quarantined)."""

        def on_retry(exc: BaseException, _delay: float) -> None:
            kind = exc.kind.value if isinstance(exc, CdcError) else type(exc).__name__
            self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
            self.metrics.errors.labels(kind).inc()
            self.health.last_apply_ok = False
            for sink in sinks:  # they reconnect on their next use
                sink.close()

        backoff = Backoff(max_s=self.settings.max_retry_delay_s)
        for attempt in retrying(
            "apply_retry",
            backoff,
            stopping=self._stopping,
            on_retry=on_retry,
            slot=self.settings.slot,
        ):
            with attempt:
                self._write_quarantining(batch, write)
        self.health.last_apply_ok = True

    def _write_quarantining(self, batch: Batch, write: Callable[[Batch], None]) -> None:
        while True:
            try:
                write(batch)
                return
            except CdcError as exc:
                quarantine = exc.policy.action is Action.QUARANTINE_TABLE
                if not quarantine or exc.table not in batch.tables:
                    raise
                self._quarantine(exc.table, exc)
                del batch.tables[exc.table]

    def _record_applied(self, batch: Batch, seconds: float) -> None:
        now = datetime_to_pg_timestamp(datetime.now(UTC))
        self.stats.lags.extend((now - t) / 1e6 for t in batch.commit_times)
        if batch.commit_times:
            self.health.lag_s = (now - batch.commit_times[-1]) / 1e6
            self.metrics.lag_seconds.set(self.health.lag_s)
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.batches.inc()
        for ((schema, table), op), count in batch.ops.items():
            self.metrics.changes.labels(f"{schema}.{table}", op.name.lower()).inc(count)
        self.stats.batches += 1
        self.stats.transactions += batch.transactions
        self.stats.changes += batch.changes
        self.stats.skipped += batch.skipped
        self.stats.applied_lsn = batch.end_lsn
        self.position.applied(batch.end_lsn, batch.commit_times[-1] if batch.commit_times else None)

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set; records the daemon's state (and a fatal error)."""
        settings = self.settings
        record = functools.partial(
            status.record_daemon, settings.require_historic_dsn(), settings.historic_schema,
            settings.slot,
        )  # fmt: skip
        leadership = Leadership(self.source_dsn, settings.slot)
        server = (
            serve(settings.metrics_port, self.metrics, self.health, settings.metrics_host)
            if settings.metrics_port
            else None
        )
        try:
            if not leadership.acquire(
                stop,
                on_wait=lambda why: self.log.info("standby", reason=why),
                on_poll=self.health.tick,
                unreachable_for=settings.connect_timeout_s,
            ):
                return
            self.log.info("leadership_acquired")
            self._run(stop, record)
        except CdcError as exc:
            record(DaemonState.FAILED, f"{exc.kind.value}: {exc}")
            raise
        finally:
            leadership.release()
            if server is not None:
                server.shutdown()
                server.server_close()
        record(DaemonState.STOPPED)

    def _explain_lost(self, exc: CdcError) -> CdcError:
        """The server says 'does not exist' for a dropped slot and a dropped publication
        alike (same SQLSTATE): look which one it is and say what to do."""
        try:
            with self._connect_source() as conn:
                slot_gone = slots.get_slot(conn, self.settings.slot) is None
                publication_gone = not slots.publication_exists(conn, self.settings.publication)
        except CdcError:
            return exc
        if slot_gone:
            return CdcError(
                ErrorKind.SLOT_LOST,
                f"{exc}; to recover: `cdc slot recreate`, restart the daemon, then "
                "`cdc backfill` to copy the changes made while there was no slot",
            )
        if publication_gone:
            return CdcError(
                ErrorKind.SETUP,
                f"publication {self.settings.publication!r} was dropped while streaming: "
                "recreate it (`cdc publication create`), restart, then `cdc backfill` the "
                "tables to copy changes made without it",
            )
        return exc

    def _run(self, stop: threading.Event, record: Callable[[str], None]) -> None:
        try:
            self._stream(stop, record)
        except CdcError as exc:
            if exc.kind is ErrorKind.SLOT_LOST:
                raise self._explain_lost(exc) from exc
            raise

    def _setup_until_done(self) -> None:
        """`setup`, retried with backoff while it fails on something transient (a target or
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
                    self._setup_once()
        except CdcError as exc:
            if retryable(exc) and not self._stopping():
                raise CdcError(exc.kind, f"{exc} (gave up after {limit:.0f} s)") from exc
            raise

    def _setup_once(self) -> None:
        """`setup`; a connection lost on the way (the initial load's own connections raise
        psycopg's errors) is a source connection failure, retried like the others."""
        try:
            self.setup()
        except psycopg.OperationalError as lost:
            raise CdcError(
                ErrorKind.SOURCE_CONNECTION,
                f"a connection failed during setup: {redact_url(str(lost).strip())}",
            ) from lost

    def _stream(self, stop: threading.Event, record: Callable[[str], None]) -> None:
        self._stop = stop
        self._setup_until_done()
        settings = self.settings
        source = ChangeSource(
            SourceConfig(
                self.source_dsn,
                settings.slot,
                settings.publication,
                extra_publications=self._publications[1:],
                memory_budget=settings.memory_budget_mb << 20,
                status_interval=min(settings.status_interval_s, 10.0),
            )
        )
        self.log.info(
            "daemon_started", publication=settings.publication,
            clickhouse=redact_url(settings.require_clickhouse_url()),
            historic=redact_url(settings.require_historic_dsn()),
            historic_schema=settings.historic_schema,
        )  # fmt: skip
        applier = Applier(self.stages())
        monitor: Monitor | None = None
        recorder = FreshnessRecorder(
            settings.require_historic_dsn(), settings.historic_schema, settings.slot,
            lambda: self.position.held_through, settings.status_interval_s, self.log,
        )  # fmt: skip
        try:
            source.start()
            self.follower.poll()  # records the tables streamed before anyone sees it stream
            self.streaming.set()
            self.health.streaming = True
            record(DaemonState.STREAMING)
            recorder.start()
            monitor = self._start_monitor()
            self._consume(source, applier, stop)
        finally:
            if monitor is not None:
                monitor.stop()
            recorder.stop()
            self.follower.close()
            applier.close()
            source.close()
            for sink in self.sinks:
                sink.close()
            self.catalog.close()
        self.log.info(
            "daemon_stopped", applied_lsn=str(self.stats.applied_lsn), changes=self.stats.changes
        )

    def _consume(self, source: ChangeSource, applier: Applier, stop: threading.Event) -> None:
        """Read the stream into batches for the applier, acknowledge what both sinks hold,
        and keep the daemon's bookkeeping, until `stop` and every batch is applied."""
        settings = self.settings
        builder = BatchBuilder(self.key_positions, max_changes=settings.batch_size)
        latency = settings.batch_latency_ms / 1000
        acknowledged = Lsn.ZERO
        batch_started = time.monotonic()
        for event in source.events(latency):
            if isinstance(event, Transaction):
                if builder.transactions == 0:
                    batch_started = time.monotonic()
                builder.add(event, emit=applier.submit)
                event.close()
            full = builder.changes >= settings.batch_size
            due = time.monotonic() - batch_started >= latency
            if builder.transactions and (full or due or stop.is_set()):
                applier.submit(builder.build())
            if stop.is_set() and builder.transactions == 0:
                applier.drain()
            if isinstance(event, LogicalMessage) and event.prefix == HEARTBEAT_PREFIX:
                progress = source.stream.progress
                self.position.heartbeat(event.lsn, progress.received, event.content)
            acknowledged = self._acknowledge(source, applier, acknowledged)
            self.position.flushed(source.stream.flush_position, source.stream.progress.durable)
            self.health.tick()
            self._heartbeat(event)
            self._report(source, event)
            self.follower.poll_if_due()
            if stop.is_set() and builder.transactions == 0:
                break

    def _start_monitor(self) -> Monitor | None:
        """The drift monitor on a thread of its own (off when its interval is 0). With the
        embedded engine it reads through the ClickHouse sink's client: one engine per
        process, and the chdb backend serialises the calls on a client with a lock of its
        own. A server's client has a session, which runs one query at a time: there the
        monitor opens a client of its own."""
        if not self.settings.monitor_interval_s:
            return None
        sink = next((s for s in self.sinks if isinstance(s, ClickHouseSink)), None)
        embedded = embedded_path(self.settings.require_clickhouse_url()) is not None
        monitor = Monitor(
            self.settings,
            self.position,
            self.metrics,
            (lambda: sink.client) if sink is not None and embedded else None,
            self.sink_factory,
            lambda: self.quarantined,
            self.log,
            HEARTBEAT_PREFIX,
        )
        monitor.start()
        return monitor

    def _heartbeat(self, event: object) -> None:
        """While nothing arrives, write a tiny WAL record into the source database, so the
        slot keeps moving even if the published tables never change."""
        interval = self.settings.heartbeat_interval_s
        now = time.monotonic()
        if event is not None or not interval:
            self._last_event_at = now
            return
        if now - self._last_event_at >= interval:
            self.catalog.query(
                lambda conn: conn.execute(
                    "SELECT pg_logical_emit_message(false, %s, now()::text)", (HEARTBEAT_PREFIX,)
                )
            )
            self._last_event_at = now

    def _check_slot(self) -> None:
        """Retained WAL as a metric; warnings before Postgres invalidates the slot."""
        slot = self.catalog.query(lambda conn: slots.get_slot(conn, self.settings.slot))
        if slot is None or slot.wal_status == "lost":
            raise CdcError(
                ErrorKind.SLOT_LOST,
                f"replication slot {self.settings.slot!r} is "
                + ("gone" if slot is None else "invalidated (wal_status lost)")
                + ": run `cdc slot recreate`, then `cdc backfill` to copy what was missed",
            )
        if slot.retained_bytes is not None:
            self.metrics.retained_wal.set(slot.retained_bytes)
        warning = slots.wal_status_warning(slot)
        if warning:
            self.log.warning("slot_at_risk", wal_status=slot.wal_status,
                             safe_wal_size=slot.safe_wal_size, hint=warning)  # fmt: skip

    @staticmethod
    def _acknowledge(source: ChangeSource, applier: Applier, acknowledged: Lsn) -> Lsn:
        """Let the stream report what every sink holds durably (DESIGN.md invariant 5)."""
        applier.check()
        applied = applier.applied
        if applied > acknowledged:
            faults.point("before_ack")
            source.acknowledge(applied)
            faults.point("after_ack")
        return applied

    def _report(self, source: ChangeSource, event: Event | None) -> None:
        now = time.monotonic()
        elapsed = now - self._last_progress
        if elapsed < self.settings.status_interval_s:
            return
        progress = source.stream.progress
        rate = (self.stats.changes - self._last_progress_changes) / elapsed
        lag_bytes = feedback.lag_bytes(progress)
        self.metrics.lag_bytes.set(lag_bytes)
        self._check_slot()
        self.log.info(
            "progress",
            applied_lsn=str(self.stats.applied_lsn),
            lag_bytes=lag_bytes,
            lag_from=str(feedback.flush_lsn(progress)),  # what is durable (or idle)
            lag_to=str(progress.server_wal_end),  # the server's WAL end
            changes_per_s=round(rate),
            changes=self.stats.changes,
            batches=self.stats.batches,
            quarantined=sorted(f"{s}.{t}" for s, t in self.quarantined),
        )
        self._last_progress = now
        self._last_progress_changes = self.stats.changes
