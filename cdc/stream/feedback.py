"""What to report to Postgres as flushed: a pure policy over the consumer's progress.

Postgres releases WAL and, after a restart, skips every transaction whose commit ends at or
before the reported flush LSN. So the flush LSN must never pass the end of the last
transaction every sink has made durable (DESIGN.md invariant 5). When nothing is in flight
and everything received is durable, there is nothing to lose by following the server's WAL
end (from keepalives): then an idle slot, or one whose tables never change while other
databases write, keeps advancing instead of pinning WAL until it is invalidated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cdc.protocol.lsn import Lsn


@dataclass(frozen=True, slots=True)
class Progress:
    """The consumer's position: its one record (the stream's, kept across reconnects;
    the daemon, the monitor and `status` read it from there).

    - `durable`: end LSN of the last transaction acknowledged as durable in every sink.
    - `received`: end LSN of the last complete transaction received.
    - `open_transaction`: a transaction (or a streamed one) has begun and not yet ended.
    - `server_wal_end`: the WAL end the server last reported in a keepalive; every
      transaction committed before it has been received.
    """

    durable: Lsn = Lsn.ZERO
    received: Lsn = Lsn.ZERO
    open_transaction: bool = False
    server_wal_end: Lsn = Lsn.ZERO

    def with_received(self, end_lsn: Lsn, still_open: bool = False) -> Progress:
        """A transaction ending at `end_lsn` received (`still_open`: another, streamed,
        has begun and not ended). Built directly: this runs once per transaction."""
        received = end_lsn if end_lsn > self.received else self.received
        return Progress(self.durable, received, still_open, self.server_wal_end)

    def with_durable(self, end_lsn: Lsn) -> Progress:
        return replace(self, durable=max(self.durable, end_lsn))

    def with_keepalive(self, wal_end: Lsn) -> Progress:
        return replace(self, server_wal_end=max(self.server_wal_end, wal_end))

    def with_open_transaction(self, is_open: bool) -> Progress:
        return replace(self, open_transaction=is_open)


def flush_lsn(progress: Progress) -> Lsn:
    """The LSN to report as written, flushed and applied."""
    idle = not progress.open_transaction and progress.durable >= progress.received
    if idle:
        return Lsn(max(progress.durable, progress.server_wal_end))
    return progress.durable


def lag_bytes(progress: Progress) -> int:
    """WAL the pipeline has still to make durable: from the flush LSN (`flush_lsn`) to the
    server's WAL end. An idle pipeline with everything durable reports 0."""
    return max(0, progress.server_wal_end - flush_lsn(progress))
