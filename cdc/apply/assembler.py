"""Turn decoded pgoutput messages into committed transactions (the second type layer).

Keeps the connection's relation and type caches, buffers each open transaction (plain
Begin…Commit, or a v2 streamed transaction across Stream Start/Stop blocks) and returns a
`cdc.apply.changes.Transaction` on commit. Streamed transactions are dropped on Stream Abort
(or only the aborted subtransaction's changes). All buffers together stay under a memory
budget: past it the largest buffer spills to a temp file. Pure apart from that temp file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdc.apply.changes import RecordChunk, Transaction
from cdc.apply.spill import SpillBuffer
from cdc.errors import CdcError, ErrorKind
from cdc.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)
from cdc.protocol.lsn import Lsn

# A decoded change costs a few times its wire size in Python objects.
MEMORY_FACTOR = 4
RECORD_OVERHEAD = 120

Event = Transaction | LogicalMessage
_ROW_CHANGES = frozenset({Insert, Update, Delete})


class Assembler:
    """Feed messages in stream order; `feed` returns a completed event or None."""

    def __init__(self, memory_budget: int = 256 << 20, spill_dir: Path | None = None) -> None:
        self.memory_budget = memory_budget
        self.spill_dir = spill_dir
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, Type] = {}
        self._current: Begin | None = None
        self._current_buffer: SpillBuffer | None = None
        self._streams: dict[int, SpillBuffer] = {}
        self._stream_xid: int | None = None
        self._memory = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def has_open_transaction(self) -> bool:
        return self._current is not None or bool(self._streams)

    def reset(self) -> None:
        """Forget everything tied to the connection (after a reconnect the server resends
        relations and every transaction not confirmed)."""
        for buffer in self._streams.values():
            buffer.close()
        if self._current_buffer is not None:
            self._current_buffer.close()
        self.relations.clear()
        self.types.clear()
        self._current = None
        self._current_buffer = None
        self._streams.clear()
        self._stream_xid = None
        self._memory = 0

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, message: Message, size: int) -> Event | None:
        kind = type(message)
        if kind in _ROW_CHANGES:
            self._append(message.xid, message.relation_oid, message, size)  # type: ignore[union-attr]
            return None
        if kind is Begin:
            assert isinstance(message, Begin)
            if self._current is not None:
                raise CdcError(ErrorKind.PROTOCOL, "Begin inside an open transaction")
            self._current = message
            self._current_buffer = SpillBuffer(self.spill_dir)
            return None
        if kind is Commit:
            assert isinstance(message, Commit)
            return self._commit(message)
        if kind is Relation:
            assert isinstance(message, Relation)
            self.relations[message.oid] = message
            return None
        if kind is Truncate:
            assert isinstance(message, Truncate)
            for oid in message.relation_oids:
                self._append(message.xid, oid, message, size)
            return None
        if kind is StreamStart:
            assert isinstance(message, StreamStart)
            self._stream_xid = message.xid
            if message.xid not in self._streams:
                self._streams[message.xid] = SpillBuffer(self.spill_dir)
            return None
        if kind is StreamStop:
            self._stream_xid = None
            return None
        if kind is StreamCommit:
            assert isinstance(message, StreamCommit)
            return self._stream_commit(message)
        if kind is StreamAbort:
            assert isinstance(message, StreamAbort)
            self._stream_abort(message)
            return None
        if kind is Type:
            assert isinstance(message, Type)
            self.types[message.oid] = message
            return None
        if kind is LogicalMessage:
            assert isinstance(message, LogicalMessage)
            return None if message.transactional else message
        if kind is Origin:
            return None
        raise CdcError(
            ErrorKind.PROTOCOL,
            f"unexpected {kind.__name__} message: two-phase decoding is not enabled on this slot",
        )

    def _append(self, xid: int | None, relation_oid: int, message: Any, size: int) -> None:
        relation = self.relations.get(relation_oid)
        if relation is None:
            raise CdcError(
                ErrorKind.PROTOCOL, f"change for relation {relation_oid} before its Relation"
            )
        if self._stream_xid is not None:
            buffer = self._streams[self._stream_xid]
        elif self._current_buffer is not None:
            buffer = self._current_buffer
        else:
            raise CdcError(ErrorKind.PROTOCOL, "row change outside a transaction")
        cost = size * MEMORY_FACTOR + RECORD_OVERHEAD
        if buffer.append(xid, relation, message, cost):
            self._memory += cost
            if self._memory > self.memory_budget:
                self._spill_largest()

    def _spill_largest(self) -> None:
        buffers = [b for b in (self._current_buffer, *self._streams.values()) if b is not None]
        largest = max(buffers, key=lambda b: b.memory_bytes)
        self._memory -= largest.memory_bytes
        largest.spill()

    def _release(self, buffer: SpillBuffer) -> None:
        self._memory -= buffer.memory_bytes

    # -- completion ------------------------------------------------------------------------

    def _commit(self, commit: Commit) -> Transaction:
        begin, buffer = self._current, self._current_buffer
        if begin is None or buffer is None:
            raise CdcError(ErrorKind.PROTOCOL, "Commit without Begin")
        self._current = None
        self._current_buffer = None
        self._release(buffer)
        return _transaction(begin.xid, commit.commit_lsn, commit.end_lsn, commit.commit_ts, buffer)

    def _stream_commit(self, commit: StreamCommit) -> Transaction:
        buffer = self._streams.pop(commit.xid, None)
        if buffer is None:
            buffer = SpillBuffer(self.spill_dir)  # a streamed transaction with no changes
        self._release(buffer)
        return _transaction(commit.xid, commit.commit_lsn, commit.end_lsn, commit.commit_ts, buffer)

    def _stream_abort(self, abort: StreamAbort) -> None:
        buffer = self._streams.get(abort.xid)
        if buffer is None:
            return
        if abort.subxid == abort.xid:
            del self._streams[abort.xid]
            self._release(buffer)
            buffer.close()
        else:
            buffer.aborted_subxids.add(abort.subxid)


def _transaction(
    xid: int, commit_lsn: Lsn, end_lsn: Lsn, commit_ts: int, buffer: SpillBuffer
) -> Transaction:
    def chunks() -> Iterator[RecordChunk]:
        done = 0
        for records in buffer.chunks():
            yield RecordChunk(buffer.relations, done + 1, records)
            done += len(records)

    return Transaction(xid, commit_lsn, end_lsn, commit_ts, chunks, buffer.close)
