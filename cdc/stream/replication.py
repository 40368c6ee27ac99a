"""The replication connection: the only module that speaks to libpq at the COPY level.

`ReplicationStream` opens a `replication=database` psycopg connection, runs
`START_REPLICATION ... LOGICAL` with the highest pgoutput protocol the server supports,
and hands out pgoutput payloads one at a time. It waits on the socket (never spins),
answers keepalives that ask for a reply at once, sends standby status updates every
`status_interval` seconds with the flush LSN decided by `cdc.stream.feedback.flush_lsn`, and
ends the copy cleanly on close. Connection failures raise `CdcError` with a kind chosen
from the SQLSTATE class, never from message text. The command and that choice are pure
functions in `cdc.stream.walsender`.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import pq

from cdc.errors import CdcError, ErrorKind
from cdc.protocol import Keepalive, decode_frame, encode_standby_status
from cdc.protocol.lsn import Lsn
from cdc.protocol.messages import datetime_to_pg_timestamp
from cdc.stream.feedback import Progress, flush_lsn
from cdc.stream.session import replication_connect
from cdc.stream.walsender import (
    SLOT_LOST_STATES,
    classify,
    protocol_version,
    start_replication_command,
)

COPY_WOULD_BLOCK = 0
XLOG_DATA_TAG = ord("w")
XLOG_DATA_HEADER = 25  # 'w' + wal start + wal end + send time
WAL_START = slice(1, 9)  # the XLogData's start position, in its header
STATUS_CHECK_EVERY = 256  # messages read back to back between looks at the status clock


def now_pg_timestamp() -> int:
    return datetime_to_pg_timestamp(datetime.now(UTC))


class ReplicationStream:
    """One START_REPLICATION session on one slot. Not thread-safe; one consumer."""

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        *,
        extra_publications: Sequence[str] = (),
        status_interval: float = 10.0,
        messages: bool = True,
        streaming: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dsn = dsn
        self.slot = slot
        self.publication = publication
        self.publications = (publication, *extra_publications)
        self.status_interval = status_interval
        self.messages = messages
        self.streaming = streaming
        self._clock = clock
        self._conn: psycopg.Connection[Any] | None = None
        self.proto_version = 1
        self.progress = Progress()
        self._next_status = 0.0
        self._unchecked = 0
        self._frame: memoryview | bytes = bytes(XLOG_DATA_HEADER)  # the last XLogData read

    # -- lifecycle -------------------------------------------------------------------------

    def reset(self, start: Lsn) -> None:
        """Take `start` as durable and received: where the next `open` starts."""
        self.progress = Progress(durable=start, received=start)

    def open(self) -> None:
        """Connect and start streaming from the durable position (the server never goes
        below the slot's confirmed_flush_lsn, so 0/0 means "where the slot is"). What was
        received before stays received: the caller skips it when it is sent again."""
        start = self.progress.durable
        try:
            conn = replication_connect(self._dsn)
        except psycopg.Error as exc:
            raise classify(exc, "cannot open a replication connection") from exc
        self._conn = conn
        self.proto_version = protocol_version(conn.info.server_version)
        command = start_replication_command(
            self.slot, start, self.publications, self.proto_version, self.messages, self.streaming
        )
        try:
            conn.execute(command)
        except psycopg.Error as exc:
            conn.close()
            self._conn = None
            raise classify(exc, f"cannot start replication from slot {self.slot!r}") from exc
        self.progress = self.progress.with_open_transaction(False)
        self._next_status = self._clock() + self.status_interval

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def close(self) -> None:
        """Send a final status update, end the copy (CopyDone) and close the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        pgconn = conn.pgconn
        try:
            self._send_status(pgconn, reply_requested=False)
            pgconn.put_copy_end()
            self._flush(pgconn)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                nbytes, _ = pgconn.get_copy_data(1)
                if nbytes == COPY_WOULD_BLOCK:
                    select.select([pgconn.socket], [], [], 0.1)
                    pgconn.consume_input()
                elif nbytes < 0:
                    break
            while pgconn.get_result() is not None:
                pass
        except psycopg.Error:
            pass  # the connection is going away either way
        finally:
            conn.close()

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- progress --------------------------------------------------------------------------

    def acknowledge(self, end_lsn: Lsn) -> None:
        """Every sink has durably applied all transactions ending at or before `end_lsn`."""
        self.progress = self.progress.with_durable(end_lsn)

    def note_received(self, end_lsn: Lsn, still_open: bool = False) -> None:
        self.progress = self.progress.with_received(end_lsn, still_open)

    def note_open_transaction(self, is_open: bool) -> None:
        self.progress = self.progress.with_open_transaction(is_open)

    @property
    def flush_position(self) -> Lsn:
        return flush_lsn(self.progress)

    # -- reading ---------------------------------------------------------------------------

    def read(self, timeout: float) -> bytes | None:
        """The next pgoutput message, or None if none arrived within `timeout` seconds.
        Keepalives and status updates are handled here and never returned."""
        return self.read_until(self.deadline(timeout))

    def deadline(self, timeout: float) -> float:
        """The stream clock's time `timeout` seconds from now, for `read_until`."""
        return self._clock() + timeout

    def read_until(self, deadline: float) -> bytes | None:
        """`read`, with the clock's time to give up instead of a timeout. A message that
        is already received is returned without looking at the clock; a due status update
        is checked every `STATUS_CHECK_EVERY` messages and whenever the socket has nothing."""
        pgconn = self._pgconn()
        while True:
            try:
                nbytes, data = pgconn.get_copy_data(1)
            except psycopg.Error as exc:
                raise self._lost(exc) from exc
            if nbytes > 0:
                if data[0] == XLOG_DATA_TAG:  # `data` is a memoryview over libpq's buffer
                    self._unchecked += 1
                    if self._unchecked >= STATUS_CHECK_EVERY:
                        self._unchecked = 0
                        self._maybe_send_status(pgconn)
                    self._frame = data  # its WAL start names it if it cannot be decoded
                    payload: bytes = data[XLOG_DATA_HEADER:].tobytes()
                    return payload
                frame = decode_frame(data)
                if isinstance(frame, Keepalive):
                    self.progress = self.progress.with_keepalive(frame.wal_end)
                    if frame.reply_requested:
                        self._send_status(pgconn, reply_requested=False)
                continue
            if nbytes == COPY_WOULD_BLOCK:
                self._maybe_send_status(pgconn)
                now = self._clock()
                if now >= deadline:
                    return None
                wait = min(deadline - now, max(self._next_status - now, 0.0))
                readable, _, _ = select.select([pgconn.socket], [], [], wait)
                if readable:
                    try:
                        pgconn.consume_input()
                    except psycopg.Error as exc:
                        raise self._lost(exc) from exc
                continue
            raise self._copy_ended(pgconn)

    @property
    def last_wal_start(self) -> Lsn:
        """The WAL position of the last message `read_until` returned (to name it when it
        cannot be decoded)."""
        return Lsn(int.from_bytes(self._frame[WAL_START], "big"))

    def keep_alive(self) -> None:
        """Send the status update that is due, while the reader cannot read (the applier
        is full: a batch waits for a table's copy, or a slow target): the server ends a
        session it has not heard from for `wal_sender_timeout`. A lost session is left
        for the next read to find."""
        if self._conn is None:
            return
        with contextlib.suppress(CdcError):
            self._maybe_send_status(self._conn.pgconn)

    def send_status(self, reply_requested: bool = False) -> None:
        self._send_status(self._pgconn(), reply_requested)

    # -- internals -------------------------------------------------------------------------

    def _pgconn(self) -> Any:
        if self._conn is None:
            raise CdcError(ErrorKind.PROTOCOL, "replication stream is not open")
        return self._conn.pgconn

    def _maybe_send_status(self, pgconn: Any) -> None:
        if self._clock() >= self._next_status:
            self._send_status(pgconn, reply_requested=False)

    def _send_status(self, pgconn: Any, reply_requested: bool) -> None:
        position = self.flush_position
        message = encode_standby_status(
            position, position, position, now_pg_timestamp(), reply_requested
        )
        try:
            while pgconn.put_copy_data(message) == 0:
                select.select([], [pgconn.socket], [], 1)
            self._flush(pgconn)
        except psycopg.Error as exc:
            raise self._lost(exc) from exc
        self._next_status = self._clock() + self.status_interval

    @staticmethod
    def _flush(pgconn: Any) -> None:
        while pgconn.flush() != 0:
            select.select([], [pgconn.socket], [], 1)

    def _lost(self, exc: psycopg.Error) -> CdcError:
        self._drop()
        return classify(exc, f"replication connection for slot {self.slot!r} lost")

    def _copy_ended(self, pgconn: Any) -> CdcError:
        error: CdcError = CdcError(
            ErrorKind.SOURCE_CONNECTION, f"server ended replication on slot {self.slot!r}"
        )
        result = pgconn.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            message = (result.error_message or b"").decode(errors="replace").strip()
            kind = ErrorKind.SLOT_LOST if state in SLOT_LOST_STATES else error.kind
            error = CdcError(kind, f"server ended replication on slot {self.slot!r}: {message}")
        self._drop()
        return error

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
