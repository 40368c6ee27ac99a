"""The change source: one slot as an ordered iterator of committed transactions.

Composes the replication connection, the pure decoder and the assembler. After a dropped
connection it reconnects with capped, jittered exponential backoff and resumes from the
last durable LSN; transactions already received before the drop are not handed out twice
(Postgres resends everything after the confirmed position, and commits arrive in strictly
increasing end-LSN order).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdc.apply.assembler import Assembler, Event
from cdc.apply.changes import Transaction
from cdc.errors import CdcError, DecodeError
from cdc.ops.logs import get_logger
from cdc.protocol import Decoder
from cdc.protocol.lsn import Lsn
from cdc.retry import Backoff, retryable, retrying
from cdc.stream.replication import ReplicationStream


@dataclass(frozen=True)
class SourceConfig:
    dsn: str
    slot: str
    publication: str
    extra_publications: tuple[str, ...] = ()  # streamed too (the append-only one)
    memory_budget: int = 256 << 20
    spill_dir: Path | None = None
    status_interval: float = 10.0
    max_backoff: float = 30.0
    messages: bool = True
    streaming: bool = True


class ChangeSource:
    """Iterate `events()`; call `acknowledge(end_lsn)` once a transaction is durable."""

    def __init__(self, config: SourceConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self.assembler = Assembler(config.memory_budget, config.spill_dir)
        self.stream = ReplicationStream(
            config.dsn,
            config.slot,
            config.publication,
            extra_publications=config.extra_publications,
            status_interval=config.status_interval,
            messages=config.messages,
            streaming=config.streaming,
        )
        self.decoder = Decoder(1)
        self.reconnects = 0
        self._losses = 0  # connections lost in a row, with nothing received in between
        self._log = get_logger(slot=config.slot)

    def _open(self) -> None:
        backoff = Backoff(max_s=self.config.max_backoff)
        for attempt in retrying(
            "source_reconnect_wait", backoff, sleep=self._sleep, slot=self.config.slot
        ):
            with attempt:
                self.stream.open()
        self.decoder = Decoder(self.stream.proto_version)
        self._log.info(
            "replication_started",
            start_lsn=str(self.stream.progress.durable),
            proto=self.stream.proto_version,
        )

    def acknowledge(self, end_lsn: Lsn) -> None:
        self.stream.acknowledge(end_lsn)

    def start(self, start: Lsn = Lsn.ZERO) -> None:
        self.stream.reset(start)
        self._open()

    def events(self, timeout: float) -> Iterator[Event | None]:
        """Committed transactions and non-transactional logical messages, in commit order.
        Yields None whenever `timeout` seconds pass without one (so callers can flush)."""
        while True:
            try:
                event = self._next_event(timeout)
            except CdcError as exc:
                if not retryable(exc):
                    raise
                self._log.warning("source_connection_lost", error=str(exc))
                self.stream.close()
                self.assembler.reset()
                self.reconnects += 1
                # The server may end replication at once again (a decoding error it
                # meets at the same place every time): back off, and let the caller see
                # its stop request between attempts.
                self._losses += 1
                if self._losses > 1:
                    backoff = Backoff(max_s=self.config.max_backoff)
                    self._sleep(backoff.delay(self._losses - 1) + random.uniform(0, 0.2))
                self._open()
                yield None
                continue
            if event is not None:
                self._losses = 0
            yield event

    def _next_event(self, timeout: float) -> Event | None:
        stream, decoder, assembler = self.stream, self.decoder, self.assembler
        deadline = stream.deadline(timeout)
        feed, decode = assembler.feed, decoder.decode
        while True:
            payload = stream.read_until(deadline)
            if payload is None:
                stream.note_open_transaction(assembler.has_open_transaction)
                return None
            try:
                message = decode(payload)
            except DecodeError as exc:
                raise DecodeError(
                    f"{exc} (the message at WAL position {stream.last_wal_start} of slot "
                    f"{self.config.slot!r})"
                ) from exc
            event = feed(message, len(payload))
            if event is None:
                continue
            if isinstance(event, Transaction):
                resent = event.end_lsn <= stream.progress.received
                stream.note_received(event.end_lsn, assembler.has_open_transaction)
                if resent:
                    event.close()  # resent after a reconnect; already handed out
                    continue
            return event

    def close(self) -> None:
        self.stream.close()
        self.assembler.reset()

    def __enter__(self) -> ChangeSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
