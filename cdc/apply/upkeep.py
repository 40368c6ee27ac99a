"""What the daemon's loop does besides moving changes: while nothing arrives, a tiny
WAL record in the source database (so the slot keeps moving even if the published tables
never change); every status interval, the slot checked (retained WAL as a metric,
warnings before Postgres invalidates it) and a progress line logged."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cdc.apply.assembler import Event
from cdc.apply.stages import Stats
from cdc.errors import REPLAY_LOST, CdcError, ErrorKind
from cdc.ops.metrics import Metrics
from cdc.ops.settings import Settings
from cdc.stream import feedback, slots
from cdc.stream.catalog import Catalog
from cdc.stream.source import ChangeSource


class Upkeep:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        metrics: Metrics,
        stats: Stats,
        quarantined: Callable[[], dict[tuple[str, str], str]],
        heartbeat_prefix: str,
        log: Any,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.metrics = metrics
        self.stats = stats
        self._quarantined = quarantined
        self._prefix = heartbeat_prefix
        self.log = log
        self._last_progress = time.monotonic()
        self._last_event_at = time.monotonic()
        self._last_progress_changes = 0

    def tick(self, source: ChangeSource, event: Event | None) -> None:
        """After each event of the stream (None: nothing arrived in time)."""
        self._heartbeat(event)
        self._report(source)

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
                    "SELECT pg_logical_emit_message(false, %s, now()::text)", (self._prefix,)
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
                + f": {REPLAY_LOST}",
            )
        if slot.retained_bytes is not None:
            self.metrics.retained_wal.set(slot.retained_bytes)
        warning = slots.wal_status_warning(slot)
        if warning:
            self.log.warning("slot_at_risk", wal_status=slot.wal_status,
                             safe_wal_size=slot.safe_wal_size, hint=warning)  # fmt: skip

    def _report(self, source: ChangeSource) -> None:
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
            applied_lsn=self.stats.applied,
            lag_bytes=lag_bytes,
            lag_from=str(feedback.flush_lsn(progress)),  # what is durable (or idle)
            lag_to=str(progress.server_wal_end),  # the server's WAL end
            changes_per_s=round(rate),
            changes=self.stats.changes,
            batches=self.stats.batches,
            quarantined=sorted(f"{s}.{t}" for s, t in self._quarantined()),
        )
        self._last_progress = now
        self._last_progress_changes = self.stats.changes
