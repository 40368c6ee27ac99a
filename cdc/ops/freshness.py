"""Records how fresh the targets are where `cdc status` reads it, from the daemon.

Every `interval_s` (at most twice a second), and once more when stopped, the commit time
of the newest source transaction both targets hold
(`cdc.check.position.TargetPosition.held_through`) is written to
`_cdc_daemon.held_through` in the historic database; `cdc status` shows the freshness as
the time since. On a thread of its own, with a connection of its own, so the streaming
loop never waits for it; a failed write is logged once and tried again at the next tick.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from cdc.ops import status
from cdc.ops.settings import redact_url

CONNECT_TIMEOUT_S: Final = 5
MIN_INTERVAL_S: Final = 0.5


class FreshnessRecorder:
    def __init__(
        self,
        dsn: str,
        schema: str,
        slot: str,
        held_through: Callable[[], float | None],
        interval_s: float,
        log: Any,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.slot = slot
        self.held_through = held_through
        self.interval_s = max(interval_s, MIN_INTERVAL_S)
        self.log = log
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._failing = False  # logged once until a write succeeds again

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="cdc-freshness", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.interval_s):
                self.record()
            self.record()  # the last value a stopped daemon leaves
        finally:
            if self._conn is not None:
                self._conn.close()

    def record(self) -> None:
        at = self.held_through()
        if at is None:
            return
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
                status.ensure(self._conn, self.schema)
            status.record_held_through(
                self._conn, self.schema, self.slot, datetime.fromtimestamp(at, UTC)
            )
            self._failing = False
        except psycopg.Error as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if not self._failing:
                self._failing = True
                self.log.warning("freshness_not_recorded", error=redact_url(str(exc).strip()))
