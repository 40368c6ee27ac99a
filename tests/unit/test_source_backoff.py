"""A server that ends replication at once every time (a decoding error it meets at the same
place, such as "could not map filenode") is reconnected to with backoff, and the caller
gets a chance to stop between attempts, instead of a reconnect loop without pause. A
message that cannot be decoded is named by its WAL position."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cdc.errors import CdcError, DecodeError, ErrorKind
from cdc.ops.leader import Leadership
from cdc.protocol.lsn import Lsn
from cdc.stream.feedback import Progress
from cdc.stream.replication import ReplicationStream
from cdc.stream.source import ChangeSource, SourceConfig


class EndingStream:
    """A replication stream whose server ends replication as soon as it is read."""

    is_open = True
    proto_version = 1

    def __init__(self) -> None:
        self.opened = 0
        self.progress = Progress()

    def reset(self, start: Lsn) -> None:
        self.progress = Progress(durable=start, received=start)

    def open(self) -> None:
        self.opened += 1

    def read_until(self, deadline: float) -> bytes | None:
        raise CdcError(
            ErrorKind.SOURCE_CONNECTION,
            "server ended replication on slot 's': ERROR:  could not map filenode",
        )

    def deadline(self, timeout: float) -> float:
        return 0.0

    def acknowledge(self, lsn: Lsn) -> None: ...
    def note_received(self, lsn: Lsn) -> None: ...
    def note_open_transaction(self, open_transaction: bool) -> None: ...
    def close(self) -> None: ...


def test_repeated_lost_connections_back_off_and_yield() -> None:
    sleeps: list[float] = []
    source = ChangeSource(SourceConfig("dbname=none", "s", "p", max_backoff=2.0), sleeps.append)
    stream: Any = EndingStream()
    source.stream = stream
    source.start()
    events = source.events(0.1)
    for _ in range(8):
        assert next(events) is None  # a stop request is seen between reconnects
    assert stream.opened == 9 and source.reconnects == 8
    assert len(sleeps) == 7  # the first reconnect is immediate
    assert sleeps[0] < sleeps[3] < sleeps[5]
    assert max(sleeps) <= 2.0 + 0.2


class GarbledStream(EndingStream):
    """A stream whose next message is not pgoutput."""

    last_wal_start = Lsn.parse("0/1A2B3C4")

    def read_until(self, deadline: float) -> bytes | None:
        return b"\xff not a message"


def test_a_message_that_cannot_be_decoded_is_named_by_its_wal_position() -> None:
    source = ChangeSource(SourceConfig("dbname=none", "s", "p"), lambda s: None)
    stream: Any = GarbledStream()
    source.stream = stream
    source.start()
    with pytest.raises(DecodeError, match=r"at WAL position 0/1A2B3C4 of slot 's'"):
        next(source.events(0.1))


class Frames:
    """libpq's side of a replication connection: each XLogData frame once, as psycopg
    hands it out (a memoryview over a buffer of its own)."""

    closed = False

    def __init__(self, frames: list[bytes]) -> None:
        self.pgconn = self
        self._frames = frames

    def get_copy_data(self, _async: int) -> tuple[int, memoryview]:
        frame = self._frames.pop(0)
        return len(frame), memoryview(bytearray(frame))


def test_the_stream_names_the_wal_position_of_the_last_message_it_returned() -> None:
    stream = ReplicationStream("postgresql://localhost/db", "s", "p")
    first, second = 0x1A2B3C4, (7 << 32) | 0x10
    stream._conn = Frames(  # type: ignore[assignment]
        [b"w" + start.to_bytes(8, "big") + bytes(16) + body
         for start, body in ((first, b"B-first"), (second, b"I-second"))]
    )  # fmt: skip
    stream._next_status = float("inf")
    assert stream.read(1.0) == b"B-first"
    assert stream.last_wal_start == Lsn(first)
    assert stream.read(1.0) == b"I-second"
    assert str(stream.last_wal_start) == "7/10"


def test_a_source_unreachable_for_the_pipeline_lock_is_said_once_not_every_second() -> None:
    """A daemon started while its source is down logged the same `standby` line every
    second until it gave up."""
    said: list[str] = []
    leadership = Leadership("postgresql://cdc@127.0.0.1:1/none", "s", poll_interval=0.05)
    with pytest.raises(CdcError, match="gave up after 1 s") as failed:
        leadership.acquire(threading.Event(), on_wait=said.append, unreachable_for=1.0)
    assert failed.value.kind is ErrorKind.SOURCE_CONNECTION
    assert len(said) == 1 and "cannot reach the source" in said[0]
