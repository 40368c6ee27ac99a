"""A server that ends replication at once every time (a decoding error it meets at the same
place, such as "could not map filenode") is reconnected to with backoff, and the caller
gets a chance to stop between attempts, instead of a reconnect loop without pause."""

from __future__ import annotations

from typing import Any

import pytest

from cdc.errors import CdcError, DecodeError, ErrorKind
from cdc.protocol.lsn import Lsn
from cdc.stream.feedback import Progress
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
