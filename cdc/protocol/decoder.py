"""Stateful, pure decoder of pgoutput messages (XLogData payloads) into message objects.

The only state is whether the stream is inside a Stream Start ... Stream Stop block: there,
Relation, Type, Insert, Update, Delete, Truncate and Message carry a leading xid.
Every message must consume exactly its bytes; anything else raises `DecodeError`.

The decoder dispatches on the tag, keeps that state, and decodes the messages that depend
on it; row changes are decoded in `cdc.protocol.rows` (the hot path), the messages that
bound a transaction in `cdc.protocol.transactions`, with the readers of
`cdc.protocol.fields`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from struct import Struct
from typing import Final

from cdc.errors import DecodeError
from cdc.protocol import rows, transactions
from cdc.protocol.fields import expect_end, read_string, unpack
from cdc.protocol.lsn import Lsn
from cdc.protocol.messages import (
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)
from cdc.protocol.rows import row_parser
from cdc.protocol.tags import (
    MESSAGE_NAMES,
    MIN_PROTO_VERSION,
    LogicalMessageFlag,
    MessageTag,
    RelationColumnFlag,
    ReplicaIdentity,
    TruncateOption,
    describe_byte,
)

# Fixed parts, all big-endian, all starting right after the tag byte unless noted (those
# of row changes and of the messages bounding a transaction are with their decoding).
XID: Final = Struct(">I")  # the leading xid of messages inside a stream block
OID: Final = Struct(">I")
REPLICA_IDENTITY_NCOLS: Final = Struct(">BH")  # after the relation's two names
COLUMN_FLAGS: Final = Struct(">B")  # before each column name
COLUMN_TYPE: Final = Struct(">Ii")  # after each column name: type oid, type modifier
TRUNCATE_HEAD: Final = Struct(">IB")  # relation count, options
MESSAGE_HEAD: Final = Struct(">BQ")  # flags, lsn; prefix string follows
MESSAGE_LENGTH: Final = Struct(">I")  # after the prefix: content length
STREAM_START: Final = Struct(">IB")  # xid, first-segment flag
STREAM_ABORT: Final = Struct(">II")  # xid, subxid
STREAM_ABORT_INFO: Final = Struct(">Qq")  # abort lsn, abort ts (protocol 4, parallel)

_REPLICA_IDENTITIES: Final = {ord(r): r for r in ReplicaIdentity}
# Every defined bit of each flag byte, as plain ints (`~` on an IntFlag drops unknown bits).
_TRUNCATE_OPTIONS: Final = int(TruncateOption.CASCADE | TruncateOption.RESTART_IDENTITY)
_COLUMN_FLAGS: Final = int(RelationColumnFlag.KEY)
_MESSAGE_FLAGS: Final = int(LogicalMessageFlag.TRANSACTIONAL)

SUPPORTED_PROTO_VERSIONS: Final = range(1, 5)

_parse_row: Final = row_parser()


class Decoder:
    """Decodes one pgoutput message at a time for a given `proto_version` (1-4)."""

    __slots__ = ("_handlers", "_proto_version", "_streaming")

    def __init__(self, proto_version: int) -> None:
        if proto_version not in SUPPORTED_PROTO_VERSIONS:
            raise ValueError(f"unsupported pgoutput proto_version {proto_version!r} (1 to 4)")
        self._proto_version = proto_version
        self._streaming = False
        handlers: dict[MessageTag, Callable[[bytes], Message]] = {
            MessageTag.BEGIN: transactions.begin,
            MessageTag.COMMIT: transactions.commit,
            MessageTag.ORIGIN: transactions.origin,
            MessageTag.RELATION: self._relation,
            MessageTag.TYPE: self._type,
            MessageTag.INSERT: self._insert,
            MessageTag.UPDATE: self._update,
            MessageTag.DELETE: self._delete,
            MessageTag.TRUNCATE: self._truncate,
            MessageTag.MESSAGE: self._message,
            MessageTag.STREAM_START: self._stream_start,
            MessageTag.STREAM_STOP: self._stream_stop,
            MessageTag.STREAM_COMMIT: transactions.stream_commit,
            MessageTag.STREAM_ABORT: self._stream_abort,
            MessageTag.BEGIN_PREPARE: transactions.begin_prepare,
            MessageTag.PREPARE: transactions.prepare,
            MessageTag.COMMIT_PREPARED: transactions.commit_prepared,
            MessageTag.ROLLBACK_PREPARED: transactions.rollback_prepared,
            MessageTag.STREAM_PREPARE: transactions.stream_prepare,
        }
        self._handlers: dict[int, Callable[[bytes], Message]] = {
            tag.byte: handler
            for tag, handler in handlers.items()
            if MIN_PROTO_VERSION.get(tag, 1) <= proto_version
        }

    @property
    def proto_version(self) -> int:
        return self._proto_version

    @property
    def in_stream(self) -> bool:
        """True between a Stream Start and its Stream Stop."""
        return self._streaming

    def decode(self, payload: bytes | memoryview) -> Message:
        """Decode one complete message; raises `DecodeError` if it is anything else."""
        data = payload if type(payload) is bytes else bytes(payload)
        if _parse_row is not None:  # row changes in C; anything else (or malformed) below
            row = _parse_row(self._streaming, data)
            if row is not None:
                return row
        try:
            handler = self._handlers[data[0]]
        except IndexError:
            raise DecodeError("pgoutput message is empty") from None
        except KeyError:
            raise DecodeError(self._unknown_tag(data[0])) from None
        try:
            return handler(data)
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
            name = MESSAGE_NAMES[MessageTag(chr(data[0]))]
            raise DecodeError(f"{name}: malformed message ({exc})") from exc

    def _unknown_tag(self, tag: int) -> str:
        try:
            known = MessageTag(chr(tag))
        except ValueError:
            return f"unknown pgoutput message tag {describe_byte(tag)}"
        return (
            f"{MESSAGE_NAMES[known]} (tag {describe_byte(tag)}) needs protocol version"
            f" >= {MIN_PROTO_VERSION[known]}, decoder is at {self._proto_version}"
        )

    def _xid(self, data: bytes, what: str) -> tuple[int | None, int]:
        """The leading xid (inside a stream block only) and the offset after it."""
        if self._streaming:
            return unpack(XID, data, 1, what)[0], 5
        return None, 1

    # Catalog ---------------------------------------------------------------------------

    def _relation(self, data: bytes) -> Relation:
        xid, pos = self._xid(data, "Relation")
        (oid,) = unpack(OID, data, pos, "Relation")
        namespace, pos = read_string(data, pos + 4, "Relation namespace")
        name, pos = read_string(data, pos, "Relation name")
        identity, ncols = unpack(REPLICA_IDENTITY_NCOLS, data, pos, "Relation")
        replica_identity = _REPLICA_IDENTITIES.get(identity)
        if replica_identity is None:
            raise DecodeError(f"Relation: unknown replica identity {describe_byte(identity)}")
        pos += REPLICA_IDENTITY_NCOLS.size
        columns = []
        for col in range(1, ncols + 1):
            what = f"Relation column {col} of {ncols}"
            (flags,) = unpack(COLUMN_FLAGS, data, pos, what)
            if flags & ~_COLUMN_FLAGS:
                raise DecodeError(f"{what}: unknown flags 0x{flags:02x}")
            column_name, pos = read_string(data, pos + 1, what)
            type_oid, type_modifier = unpack(COLUMN_TYPE, data, pos, what)
            pos += COLUMN_TYPE.size
            columns.append(RelationColumn(bool(flags), column_name, type_oid, type_modifier))
        expect_end(data, pos, "Relation")
        return Relation(xid, oid, namespace, name, replica_identity, tuple(columns))

    def _type(self, data: bytes) -> Type:
        xid, pos = self._xid(data, "Type")
        (oid,) = unpack(OID, data, pos, "Type")
        namespace, pos = read_string(data, pos + 4, "Type namespace")
        name, pos = read_string(data, pos, "Type name")
        expect_end(data, pos, "Type")
        return Type(xid, oid, namespace, name)

    # Row changes (the hot path: `cdc.protocol.rows`) ----------------------------------------

    def _insert(self, data: bytes) -> Insert:
        return rows.insert(data, self._streaming)

    def _update(self, data: bytes) -> Update:
        return rows.update(data, self._streaming)

    def _delete(self, data: bytes) -> Delete:
        return rows.delete(data, self._streaming)

    def _truncate(self, data: bytes) -> Truncate:
        xid, pos = self._xid(data, "Truncate")
        count, options = unpack(TRUNCATE_HEAD, data, pos, "Truncate")
        if options & ~_TRUNCATE_OPTIONS:
            raise DecodeError(f"Truncate: unknown option flags 0x{options:02x}")
        pos += TRUNCATE_HEAD.size
        if len(data) - pos != 4 * count:
            raise DecodeError(
                f"Truncate: {count} relation oids need {4 * count} bytes, have {len(data) - pos}"
            )
        oids = struct.unpack_from(f">{count}I", data, pos)
        return Truncate(
            xid,
            bool(options & TruncateOption.CASCADE),
            bool(options & TruncateOption.RESTART_IDENTITY),
            oids,
        )

    def _message(self, data: bytes) -> LogicalMessage:
        xid, pos = self._xid(data, "Message")
        flags, lsn = unpack(MESSAGE_HEAD, data, pos, "Message")
        if flags & ~_MESSAGE_FLAGS:
            raise DecodeError(f"Message: unknown flags 0x{flags:02x}")
        prefix, pos = read_string(data, pos + MESSAGE_HEAD.size, "Message prefix")
        (length,) = unpack(MESSAGE_LENGTH, data, pos, "Message")
        pos += MESSAGE_LENGTH.size
        if len(data) - pos != length:
            raise DecodeError(f"Message: content length {length}, have {len(data) - pos} bytes")
        return LogicalMessage(xid, bool(flags), Lsn(lsn), prefix, data[pos:])

    # Streamed transactions (protocol 2+) -------------------------------------------------

    def _stream_start(self, data: bytes) -> StreamStart:
        xid, first = unpack(STREAM_START, data, 1, "StreamStart")
        expect_end(data, 1 + STREAM_START.size, "StreamStart")
        if first > 1:
            raise DecodeError(f"StreamStart: first-segment flag must be 0 or 1, got {first}")
        if self._streaming:
            raise DecodeError(f"StreamStart: xid {xid} while already inside a stream block")
        self._streaming = True
        return StreamStart(xid, bool(first))

    def _stream_stop(self, data: bytes) -> StreamStop:
        expect_end(data, 1, "StreamStop")
        if not self._streaming:
            raise DecodeError("StreamStop: not inside a stream block")
        self._streaming = False
        return StreamStop()

    def _stream_abort(self, data: bytes) -> StreamAbort:
        xid, subxid = unpack(STREAM_ABORT, data, 1, "StreamAbort")
        pos = 1 + STREAM_ABORT.size
        if pos == len(data):
            return StreamAbort(xid, subxid, None, None)
        if self._proto_version < 4:
            expect_end(data, pos, "StreamAbort")
        abort_lsn, abort_ts = unpack(STREAM_ABORT_INFO, data, pos, "StreamAbort abort info")
        expect_end(data, pos + STREAM_ABORT_INFO.size, "StreamAbort")
        return StreamAbort(xid, subxid, Lsn(abort_lsn), abort_ts)
