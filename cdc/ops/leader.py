"""One active daemon per pipeline: a session advisory lock on the source, held while streaming.

Several daemons may run for one slot; the one holding the lock streams, the others wait
and poll. When the holder dies its connection closes and Postgres releases the lock, so a
standby takes over within a poll interval (Postgres also refuses a second consumer on an
active slot, which the stream treats as retryable, covering the moment the dead walsender
takes to exit). Once the lock is ours, a consumer still attached to the slot can only be
what a dead holder left behind (a walsender that has not noticed its client is gone, maybe
in the middle of creating the slot): it is waited for, then terminated, so that what the
new holder sees of the slot is settled.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url
from cdc.stream.session import canonical_dsn, never_idle_out

LOCK_NAMESPACE = "cdc pipeline:"
ORPHAN_GRACE_S = 5.0  # a dead holder's walsender usually exits within this
ORPHAN_PID_SQL = "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active"


class Leadership:
    def __init__(self, dsn: str, slot: str, poll_interval: float = 1.0) -> None:
        self._dsn = dsn
        self._key = LOCK_NAMESPACE + slot
        self._slot = slot
        self.poll_interval = poll_interval
        self._conn: psycopg.Connection[Any] | None = None

    def acquire(
        self,
        stop: threading.Event,
        on_wait: Any = None,
        on_poll: Any = None,
        unreachable_for: float = 60.0,
    ) -> bool:
        """Block until the lock is ours (True) or `stop` is set (False). `on_wait(reason)`
        is called when waiting starts (or the source is unreachable: once for each new
        reason), `on_poll()` on every poll (a standby is alive too). A source never reached
        within `unreachable_for` seconds is a setup error (wrong host, database or
        password), not an outage."""
        waited = False
        reached = False
        said: str | None = None
        first_failure: float | None = None
        while not stop.is_set():
            if on_poll is not None:
                on_poll()
            try:
                if self._try():
                    self._settle_slot(stop)
                    return True
                reached = True
            except CdcError as exc:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                if not reached and now - first_failure >= unreachable_for:
                    raise CdcError(
                        exc.kind, f"{exc} (gave up after {unreachable_for:.0f} s)"
                    ) from exc
                if on_wait is not None and str(exc) != said:
                    said = str(exc)
                    on_wait(said)
            else:
                if not waited and on_wait is not None:
                    on_wait("another daemon holds the pipeline lock")
                waited = True
            stop.wait(self.poll_interval)
        return False

    def _try(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(canonical_dsn(self._dsn), autocommit=True)
                never_idle_out(self._conn)
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (self._key,)
            ).fetchone()
        except psycopg.OperationalError as exc:
            raise self._lost("cannot reach the source for the pipeline lock", exc) from exc
        return bool(row and row[0])

    def _settle_slot(self, stop: threading.Event) -> None:
        """Wait until no consumer is attached to the slot; terminate one that outlives the
        grace period (the lock is ours: it belongs to a dead holder)."""
        assert self._conn is not None
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while not stop.is_set():
            try:
                row = self._conn.execute(ORPHAN_PID_SQL, (self._slot,)).fetchone()
                if row is None:
                    return
                if time.monotonic() >= deadline:
                    self._conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            except psycopg.OperationalError as exc:
                raise self._lost("lost the source while taking over the slot", exc) from exc
            stop.wait(0.1)

    def _lost(self, what: str, exc: psycopg.OperationalError) -> CdcError:
        """Close the lock's connection; the error to raise (retried by `acquire`)."""
        self.release()
        return CdcError(ErrorKind.SOURCE_CONNECTION, f"{what}: {redact_url(str(exc).strip())}")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
