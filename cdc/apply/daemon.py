"""The daemon: ordered, versioned apply of one slot to the historic schema and ClickHouse.

On start it creates what is missing (publication for the source schema's tables, slot,
target schema) with a log line for each, then streams: committed transactions are folded
into batches (by size and age), each batch is applied to the historic sink, then to
ClickHouse, and only then acknowledged, so the flush LSN reported to Postgres never passes
what both sinks hold durably (DESIGN.md invariant 5). A stop request drains the current
batch, acknowledges it and returns.

Its parts: `cdc.apply.setup` (what is created before streaming, the initial load),
`cdc.apply.stages` (a batch through the sinks), `cdc.apply.quarantine` (tables set aside);
`cdc.apply.upkeep` (heartbeats, slot checks, progress reports); here: leadership, the
loop from the stream to the applier, acknowledgements.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import psycopg

from cdc.apply.applier import Applier, Stage
from cdc.apply.batch import Batch
from cdc.apply.batcher import BatchBuilder
from cdc.apply.changes import Transaction
from cdc.apply.copybounds import CopyBounds
from cdc.apply.quarantine import Quarantine
from cdc.apply.setup import DESCRIBE_QUARANTINES, Setup
from cdc.apply.stages import BatchStages
from cdc.apply.upkeep import Upkeep
from cdc.check.monitor import Monitor
from cdc.check.position import TargetPosition
from cdc.errors import CdcError, ErrorKind
from cdc.load import jobstate
from cdc.ops import faults, status
from cdc.ops.freshness import FreshnessRecorder
from cdc.ops.leader import Leadership
from cdc.ops.logs import get_logger
from cdc.ops.metrics import HealthState, Metrics, serve
from cdc.ops.settings import Settings, redact_url
from cdc.protocol import LogicalMessage, Relation
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.sinks.base import Sink
from cdc.sinks.clickhouse.client import embedded_path
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.factory import SinkFactory, default_sinks
from cdc.states import DaemonState
from cdc.stream import publications
from cdc.stream.catalog import Catalog
from cdc.stream.following import SchemaFollower
from cdc.stream.source import ChangeSource, SourceConfig
from cdc.stream.tableload import TableLoader

HEARTBEAT_PREFIX = "cdc_heartbeat"
# While transactions stream in (a small one can arrive every few µs), the loop's
# bookkeeping (acknowledging, the targets' position, health, heartbeats, the schema
# follower) runs when a batch was applied, on any other event, or after this many seconds.
KEEP_EVERY_S = 0.01


class Daemon:
    def __init__(self, settings: Settings, sink_factory: SinkFactory | None = None) -> None:
        self.settings = settings
        self.source_dsn = settings.require_source_dsn()
        self.log = get_logger(slot=settings.slot)
        self.sink_factory = sink_factory or default_sinks(settings)
        self.sinks: list[Sink] = self.sink_factory()
        self.streaming = threading.Event()  # set once replication has started
        self.metrics = Metrics()
        self.position = TargetPosition()  # what both targets hold: LSN and commit time
        self.metrics.freshness.set_function(self.position.freshness)
        self.health = HealthState(settings.ready_max_lag_s)
        self._stop: threading.Event | None = None
        self.quarantine = Quarantine(settings, self.log)
        self._setup = Setup(settings, self.sinks, self.sink_factory, self.quarantine,
                            self.metrics, self.log, self._stopping)  # fmt: skip
        self.catalog = Catalog(self._setup.connect_source, settings.max_retry_delay_s,
                               self._stopping)  # fmt: skip
        # Copies the tables the schema follower adds; the stages wait for them, and the
        # batches end at their snapshots.
        self.copy_bounds = CopyBounds()
        loader = TableLoader(self.source_dsn, self._setup.initial_load, self.quarantine.add,
                             self.log, self.copy_bounds)  # fmt: skip
        self._stages = BatchStages(settings, self.sinks, self.quarantine, loader,
                                   self.metrics, self.health, self.position,
                                   self._stopping)  # fmt: skip
        self.stats = self._stages.stats
        self.upkeep = Upkeep(settings, self.catalog, self.metrics, self.stats,
                             lambda: self.quarantined, HEARTBEAT_PREFIX, self.log)  # fmt: skip
        self.follower = SchemaFollower(settings, self.catalog, self.sink_factory, loader,
                                       self.quarantine.add, self.quarantine.tables,
                                       self.log)  # fmt: skip

    def setup(self) -> None:
        """Create what is missing: publication, targets, slot; load existing rows once."""
        self._setup.run()

    @property
    def quarantined(self) -> dict[tuple[str, str], str]:
        """The quarantined tables and why (a copy: safe from any thread)."""
        return self.quarantine.tables()

    def table_schema(self, relation: Relation) -> TableSchema | None:
        """The table `relation` describes, None if it is quarantined (or is now)."""
        name = (relation.namespace, relation.name)
        if name in self.quarantine:
            return None
        try:
            return self.catalog.schema_for(relation)
        except CdcError as exc:
            if exc.kind not in DESCRIBE_QUARANTINES:
                raise
            self.quarantine.add(name, exc)
            return None

    # -- streaming -------------------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Apply to every sink, then record the batch as applied (`cdc.apply.stages`)."""
        self._stages.apply(batch)

    def stages(self) -> list[Stage]:
        """The applier's pipeline (`cdc.apply.stages`)."""
        return self._stages.stages()

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
        try:
            with self._setup.connect_source() as conn:
                return publications.explain_lost(conn, self.settings.slot,
                                                 self.settings.publication, exc)  # fmt: skip
        except CdcError:
            return exc

    def _run(self, stop: threading.Event, record: Callable[[str], None]) -> None:
        try:
            self._stream(stop, record)
        except CdcError as exc:
            if exc.kind is ErrorKind.SLOT_LOST:
                raise self._explain_lost(exc) from exc
            raise

    def _stream(self, stop: threading.Event, record: Callable[[str], None]) -> None:
        self._stop = stop
        self._setup.until_done()
        settings = self.settings
        source = ChangeSource(
            SourceConfig(
                self.source_dsn,
                settings.slot,
                settings.publication,
                extra_publications=self._setup.publications[1:],
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
        self.log.info("daemon_stopped", applied_lsn=self.stats.applied, changes=self.stats.changes)

    def _recorded_copies(self) -> None:
        """The snapshots of the copies made before this start: the stream replays from the
        slot's position, which may be older than some."""
        settings = self.settings
        with psycopg.connect(settings.require_historic_dsn(), autocommit=True) as conn:
            if jobstate.copies_recorded(conn, settings.historic_schema):
                for name, lsn in jobstate.copies(conn, settings.historic_schema).items():
                    self.copy_bounds.copied((settings.source_schema, name), lsn)

    def _consume(self, source: ChangeSource, applier: Applier, stop: threading.Event) -> None:
        """Read the stream into batches for the applier, acknowledge what both sinks hold,
        and keep the daemon's bookkeeping, until `stop` and every batch is applied."""
        settings = self.settings
        self._recorded_copies()
        builder = BatchBuilder(
            self.table_schema, max_changes=settings.batch_size, set_aside=self.quarantine.add,
            bounds=self.copy_bounds,
        )  # fmt: skip
        latency = settings.batch_latency_ms / 1000
        submit = functools.partial(applier.submit, waiting=source.stream.keep_alive)
        acknowledged = Lsn.ZERO
        batch_started = kept_at = time.monotonic()
        for event in source.events(latency):
            received = False
            if isinstance(event, Transaction):
                received = True
                if builder.transactions == 0:
                    batch_started = time.monotonic()
                builder.add(event, emit=submit)
                event.close()
            now = time.monotonic()
            # Read once per turn: a stop requested (by a signal) between two reads would
            # leave the loop without draining, and the batches in flight would be applied
            # after the last acknowledgement, so the slot would stay behind them.
            stopping = stop.is_set()
            full = builder.changes >= settings.batch_size
            if builder.transactions and (full or now - batch_started >= latency or stopping):
                submit(builder.build())
            if stopping:  # the builder is empty: its batch was just submitted
                applier.drain()
            elif received and applier.applied == acknowledged and now - kept_at < KEEP_EVERY_S:
                continue  # transactions stream in and nothing was applied: no news to keep
            kept_at = now
            if isinstance(event, LogicalMessage) and event.prefix == HEARTBEAT_PREFIX:
                progress = source.stream.progress
                self.position.heartbeat(event.lsn, progress.received, event.content)
            acknowledged = self._acknowledge(source, applier, acknowledged)
            self.position.flushed(source.stream.flush_position, source.stream.progress.durable)
            self.health.tick()
            self.upkeep.tick(source, event)
            self.follower.poll_if_due()
            if stopping:
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
