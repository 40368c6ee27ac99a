"""The applier's stages for one batch: completed from the historic copy and applied to
historic, then to the other sinks, then recorded as applied (stats, metrics, what both
targets hold). Each stage retries transient failures with backoff (re-applying is
harmless, DESIGN.md invariant 4); a table whose rows cannot be stored is quarantined and
the batch applied without it; anything else stops the daemon."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cdc.apply import rowtext
from cdc.apply.applier import Stage
from cdc.apply.batch import Batch
from cdc.apply.quarantine import Quarantine
from cdc.apply.unwritten import Unwritten
from cdc.check.position import TargetPosition
from cdc.errors import Action, CdcError
from cdc.ops import faults
from cdc.ops.metrics import HealthState, Metrics
from cdc.ops.settings import Settings
from cdc.protocol import datetime_to_pg_timestamp
from cdc.protocol.lsn import Lsn
from cdc.retry import Backoff, retrying
from cdc.sinks.base import Sink
from cdc.stream.tableload import TableLoader


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

    @property
    def applied(self) -> str | None:
        """The end of the last batch applied, as text; None before the first (this run)."""
        return str(self.applied_lsn) if self.applied_lsn else None


class BatchStages:
    def __init__(
        self,
        settings: Settings,
        sinks: list[Sink],
        quarantine: Quarantine,
        loader: TableLoader,
        metrics: Metrics,
        health: HealthState,
        position: TargetPosition,
        stopping: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.sinks = sinks
        self.metrics = metrics
        self.health = health
        self.position = position
        self.stats = Stats()
        self._quarantine = quarantine
        self._loader = loader
        self._stopping = stopping
        # Batches between the stages: when the first began.
        self._in_flight: dict[int, float] = {}

    def apply(self, batch: Batch) -> None:
        """Apply to every sink, then record the batch as applied (the applier's stages,
        one after the other on the calling thread)."""
        for stage in self.stages():
            stage(batch)

    def stages(self) -> list[Stage]:
        """The applier's pipeline: the batch completed from the historic copy (values the
        stream did not resend: from the batches before it not yet written, else from
        historic, `cdc.apply.unwritten`); applied to historic; then to the other sinks, and
        the bookkeeping of a batch that every sink holds. Each stage retries transient
        failures with backoff (re-applying is harmless); a table whose rows cannot be
        stored is quarantined and the batch applied without it; anything else stops the
        daemon."""
        unwritten = Unwritten()

        def complete(batch: Batch) -> None:
            self._in_flight[id(batch)] = time.monotonic()
            self._await_copies(batch)
            historic = self.sinks[0]
            self._with_retries(batch, [], lambda b: historic.complete(b, unwritten))
            unwritten.add(batch)

        def apply_historic(batch: Batch) -> None:
            def write(batch: Batch) -> None:
                faults.point("before_historic")
                self.sinks[0].apply(batch)
                faults.point("after_historic")

            try:
                self._with_retries(batch, self.sinks[:1], write)
            except BaseException:
                unwritten.failed()
                raise
            unwritten.written(batch)

        return [complete, apply_historic, self._apply_others]

    def _await_copies(self, batch: Batch) -> None:
        """Rows of a table whose copy is queued or running that need values the stream did
        not resend wait for the copy (`cdc.stream.tableload.TableLoader.wait`)."""
        for name, table in batch.tables.items():
            if name in self._loader and (incomplete := rowtext.shared_row_text(table).incomplete):
                self._loader.wait(name, len(incomplete), self._stopping)

    def _apply_others(self, batch: Batch) -> None:
        started = self._in_flight.pop(id(batch))

        def write(batch: Batch) -> None:
            for sink in self.sinks[1:]:
                faults.point("before_clickhouse")
                sink.apply(batch)
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
                self._quarantine.add(exc.table, exc)
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
