"""What both targets hold: a source WAL position and the commit time of the newest source
transaction in them.

The daemon feeds it: each batch that every sink holds (its end LSN and last commit time),
the flush position it reports to Postgres (which follows the server's WAL end while idle),
and heartbeat messages. A heartbeat (`pg_logical_emit_message`, written by the daemon when
idle and by the monitor after each source read) arrives after every transaction that
committed before it; once everything received before it is durable in both targets, both
hold the source as of the heartbeat's LSN and time. So an idle pipeline stays fresh, and
the monitor learns quickly that the daemon has passed the position it read at.

One lock guards the state: the apply thread and the main thread write, the monitor and the
metrics endpoint read.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Final, NamedTuple

from cdc.protocol import pg_timestamp_to_datetime
from cdc.protocol.lsn import Lsn

WAIT_SLICE_S: Final = 0.2  # how often a wait looks whether it should give up


class Heartbeat(NamedTuple):
    lsn: Lsn  # where the message is in the WAL
    received: Lsn  # end of the last transaction received before it
    at: float | None  # the source's clock when it was written (Unix seconds)


def heartbeat_time(content: bytes) -> float | None:
    """The source time a heartbeat carries (`now()::text`), or None if it is not one."""
    try:
        return datetime.fromisoformat(content.decode()).timestamp()
    except (UnicodeDecodeError, ValueError):
        return None


def commit_seconds(pg_timestamp: int) -> float:
    """A Commit message's timestamp (Postgres-epoch microseconds) as Unix seconds."""
    return pg_timestamp_to_datetime(pg_timestamp).timestamp()


class TargetPosition:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._changed = threading.Condition()
        self._lsn = Lsn.ZERO  # every transaction committed before it is in both targets
        self._commit_time: float | None = None  # Unix seconds
        self._heartbeats: deque[Heartbeat] = deque()

    # -- fed by the daemon ------------------------------------------------------------------

    def applied(self, end_lsn: Lsn, last_commit_pg: int | None) -> None:
        """A batch is in every sink: its end LSN and its last transaction's commit time."""
        with self._changed:
            self._lsn = max(self._lsn, end_lsn)
            if last_commit_pg is not None:
                self._advance_time(commit_seconds(last_commit_pg))
            self._changed.notify_all()

    def heartbeat(self, lsn: Lsn, received: Lsn, content: bytes) -> None:
        """A heartbeat arrived after the transactions received up to `received`."""
        with self._changed:
            self._heartbeats.append(Heartbeat(lsn, received, heartbeat_time(content)))

    def flushed(self, flush: Lsn, durable: Lsn) -> None:
        """The stream reports `flush` to Postgres; `durable` is the end of the last
        transaction every sink holds. Heartbeats received after no later transaction are
        reached."""
        with self._changed:
            self._lsn = max(self._lsn, flush)
            while self._heartbeats and self._heartbeats[0].received <= durable:
                reached = self._heartbeats.popleft()
                self._lsn = max(self._lsn, reached.lsn)
                if reached.at is not None:
                    self._advance_time(reached.at)
            self._changed.notify_all()

    def _advance_time(self, at: float) -> None:
        self._commit_time = at if self._commit_time is None else max(self._commit_time, at)

    # -- read by others ---------------------------------------------------------------------

    @property
    def lsn(self) -> Lsn:
        with self._changed:
            return self._lsn

    @property
    def held_through(self) -> float | None:
        """The commit time (Unix seconds) of the newest source transaction both targets
        hold (None: unknown yet)."""
        with self._changed:
            return self._commit_time

    def freshness(self) -> float:
        """Seconds from the newest source commit both targets hold to now (NaN: unknown)."""
        with self._changed:
            at = self._commit_time
        return math.nan if at is None else max(0.0, self._clock() - at)

    def wait_past(self, lsn: Lsn, timeout_s: float, give_up: Callable[[], bool]) -> bool:
        """Wait until both targets hold everything committed before `lsn`; False when
        `timeout_s` passed first or `give_up()` said so."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._lsn < lsn:
                left = deadline - time.monotonic()
                if left <= 0 or give_up():
                    return False
                self._changed.wait(min(left, WAIT_SLICE_S))
            return True
