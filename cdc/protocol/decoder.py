"""Stateful, pure decoder of pgoutput messages (XLogData payloads) into message objects.

The only state is whether the stream is inside a Stream Start ... Stream Stop block: there,
Relation, Type, Insert, Update, Delete, Truncate and Message carry a leading xid.
Every message must consume exactly its bytes; anything else raises `DecodeError`.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from struct import Struct
from typing import Final

from cdc.errors import DecodeError
from cdc.protocol.lsn import Lsn
from cdc.protocol.messages import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryDatum,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    OldTupleKind,
    Origin,
    Prepare,
    Relation,
    RelationColumn,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    TupleValue,
    Type,
    Update,
)
from cdc.protocol.tags import (
    MESSAGE_NAMES,
    MIN_PROTO_VERSION,
    ColumnKind,
    LogicalMessageFlag,
    MessageTag,
    RelationColumnFlag,
    ReplicaIdentity,
    TruncateOption,
    TupleMarker,
    describe_byte,
)

# Fixed parts, all big-endian, all starting right after the tag byte unless noted.
BEGIN: Final = Struct(">QqI")  # final lsn, commit ts, xid
COMMIT: Final = Struct(">BQQq")  # flags, commit lsn, end lsn, commit ts
ORIGIN_LSN: Final = Struct(">Q")  # commit lsn; the name string follows
XID: Final = Struct(">I")  # the leading xid of messages inside a stream block
OID: Final = Struct(">I")
REPLICA_IDENTITY_NCOLS: Final = Struct(">BH")  # after the relation's two names
COLUMN_FLAGS: Final = Struct(">B")  # before each column name
COLUMN_TYPE: Final = Struct(">Ii")  # after each column name: type oid, type modifier
ROW_HEAD: Final = Struct(">IB")  # relation oid, tuple marker
STREAM_ROW_HEAD: Final = Struct(">IIB")  # the same inside a stream block, after the xid
TRUNCATE_HEAD: Final = Struct(">IB")  # relation count, options
MESSAGE_HEAD: Final = Struct(">BQ")  # flags, lsn; prefix string follows
MESSAGE_LENGTH: Final = Struct(">I")  # after the prefix: content length
STREAM_START: Final = Struct(">IB")  # xid, first-segment flag
STREAM_COMMIT: Final = Struct(">IBQQq")  # xid, flags, commit lsn, end lsn, commit ts
STREAM_ABORT: Final = Struct(">II")  # xid, subxid
STREAM_ABORT_INFO: Final = Struct(">Qq")  # abort lsn, abort ts (protocol 4, parallel)
BEGIN_PREPARE: Final = Struct(">QQqI")  # prepare lsn, end lsn, prepare ts, xid; gid follows
PREPARE: Final = Struct(">BQQqI")  # flags, lsn, end lsn, ts, xid; gid follows
ROLLBACK_PREPARED: Final = Struct(">BQQqqI")  # flags, prep end, rb end, prep ts, rb ts, xid
COLUMN_LENGTH: Final = Struct(">I")  # length of a 't' or 'b' column value

_NULL: Final = ord(ColumnKind.NULL)
_TOAST: Final = ord(ColumnKind.UNCHANGED_TOAST)
_TEXT: Final = ord(ColumnKind.TEXT)
_BINARY: Final = ord(ColumnKind.BINARY)
_NEW: Final = ord(TupleMarker.NEW)
_OLD_KINDS: Final[dict[int, OldTupleKind]] = {
    ord(TupleMarker.KEY): TupleMarker.KEY,
    ord(TupleMarker.OLD): TupleMarker.OLD,
}
_REPLICA_IDENTITIES: Final = {ord(r): r for r in ReplicaIdentity}
# Every defined bit of each flag byte, as plain ints (`~` on an IntFlag drops unknown bits).
_TRUNCATE_OPTIONS: Final = int(TruncateOption.CASCADE | TruncateOption.RESTART_IDENTITY)
_COLUMN_FLAGS: Final = int(RelationColumnFlag.KEY)
_MESSAGE_FLAGS: Final = int(LogicalMessageFlag.TRANSACTIONAL)

SUPPORTED_PROTO_VERSIONS: Final = range(1, 5)

# (streaming, data) -> the Insert, Update or Delete in `data`, or None (not one, malformed)
RowParser = Callable[[bool, bytes], "Insert | Update | Delete | None"]
_parse_row: RowParser | None
try:  # built by `pip install` where a C compiler is available; optional
    from cdc.protocol._speedups import parse_row as _parse_row_c

    _parse_row = functools.partial(
        _parse_row_c, Insert, Update, Delete, TupleMarker.KEY, TupleMarker.OLD,
        UNCHANGED_TOAST, BinaryDatum,
    )  # fmt: skip
except ImportError:  # pragma: no cover - depends on the build
    _parse_row = None


def _unpack(layout: Struct, data: bytes, pos: int, what: str) -> tuple[int, ...]:
    if len(data) - pos < layout.size:
        raise DecodeError(
            f"{what}: truncated, need {layout.size} bytes at offset {pos}, have {len(data) - pos}"
        )
    return layout.unpack_from(data, pos)


def _string(data: bytes, pos: int, what: str) -> tuple[str, int]:
    """A NUL-terminated UTF-8 string at `pos`; returns it and the offset after the NUL."""
    end = data.find(0, pos)
    if end < 0:
        raise DecodeError(f"{what}: string not NUL-terminated")
    try:
        return data[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: invalid UTF-8 at offset {pos + exc.start}") from exc


def _end(data: bytes, pos: int, what: str) -> None:
    if pos != len(data):
        raise DecodeError(f"{what}: {len(data) - pos} unexpected trailing bytes at offset {pos}")


def row_parser() -> RowParser | None:
    """The C row-change parser in use; None if it was not built."""
    return _parse_row


def _tuple(data: bytes, pos: int, what: str) -> tuple[TupleData, int]:
    """TupleData at `pos` (column count, then columns); returns it and the offset after it.
    One pass, no bounds check per column: a length running past the end is caught at the
    end, or by the IndexError of reading a kind byte beyond it. (With the C part built,
    row changes are parsed by `parse_row`, and this runs only for those it refuses, to
    say what is wrong.)"""
    if len(data) - pos < 2:
        raise DecodeError(f"{what}: tuple column count truncated at offset {pos}")
    ncols = (data[pos] << 8) | data[pos + 1]
    pos += 2
    unpack_length = COLUMN_LENGTH.unpack_from
    values: list[TupleValue] = [None] * ncols
    col = 0
    try:
        for col in range(ncols):
            kind = data[pos]
            if kind == _TEXT:
                start = pos + 5
                pos = start + unpack_length(data, pos + 1)[0]
                values[col] = data[start:pos]
            elif kind == _NULL:
                pos += 1
            elif kind == _TOAST:
                values[col] = UNCHANGED_TOAST
                pos += 1
            elif kind == _BINARY:
                start = pos + 5
                pos = start + unpack_length(data, pos + 1)[0]
                values[col] = BinaryDatum(data[start:pos])
            else:
                raise DecodeError(
                    f"{what}: unknown column kind {describe_byte(kind)}"
                    f" at column {col + 1} of {ncols}"
                )
    except (IndexError, struct.error) as exc:
        raise DecodeError(f"{what}: tuple truncated at column {col + 1} of {ncols}") from exc
    if pos > len(data):
        raise DecodeError(f"{what}: tuple truncated at column {ncols} of {ncols}")
    return tuple(values), pos


class Decoder:
    """Decodes one pgoutput message at a time for a given `proto_version` (1-4)."""

    __slots__ = ("_handlers", "_proto_version", "_streaming")

    def __init__(self, proto_version: int) -> None:
        if proto_version not in SUPPORTED_PROTO_VERSIONS:
            raise ValueError(f"unsupported pgoutput proto_version {proto_version!r} (1 to 4)")
        self._proto_version = proto_version
        self._streaming = False
        handlers: dict[MessageTag, Callable[[bytes], Message]] = {
            MessageTag.BEGIN: self._begin,
            MessageTag.COMMIT: self._commit,
            MessageTag.ORIGIN: self._origin,
            MessageTag.RELATION: self._relation,
            MessageTag.TYPE: self._type,
            MessageTag.INSERT: self._insert,
            MessageTag.UPDATE: self._update,
            MessageTag.DELETE: self._delete,
            MessageTag.TRUNCATE: self._truncate,
            MessageTag.MESSAGE: self._message,
            MessageTag.STREAM_START: self._stream_start,
            MessageTag.STREAM_STOP: self._stream_stop,
            MessageTag.STREAM_COMMIT: self._stream_commit,
            MessageTag.STREAM_ABORT: self._stream_abort,
            MessageTag.BEGIN_PREPARE: self._begin_prepare,
            MessageTag.PREPARE: self._prepare,
            MessageTag.COMMIT_PREPARED: self._commit_prepared,
            MessageTag.ROLLBACK_PREPARED: self._rollback_prepared,
            MessageTag.STREAM_PREPARE: self._stream_prepare,
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
            return _unpack(XID, data, 1, what)[0], 5
        return None, 1

    # Transaction boundaries ------------------------------------------------------------

    def _begin(self, data: bytes) -> Begin:
        final_lsn, commit_ts, xid = _unpack(BEGIN, data, 1, "Begin")
        _end(data, 1 + BEGIN.size, "Begin")
        return Begin(Lsn(final_lsn), commit_ts, xid)

    def _commit(self, data: bytes) -> Commit:
        flags, commit_lsn, end_lsn, commit_ts = _unpack(COMMIT, data, 1, "Commit")
        _end(data, 1 + COMMIT.size, "Commit")
        return Commit(flags, Lsn(commit_lsn), Lsn(end_lsn), commit_ts)

    def _origin(self, data: bytes) -> Origin:
        (commit_lsn,) = _unpack(ORIGIN_LSN, data, 1, "Origin")
        name, pos = _string(data, 1 + ORIGIN_LSN.size, "Origin name")
        _end(data, pos, "Origin")
        return Origin(Lsn(commit_lsn), name)

    # Catalog ---------------------------------------------------------------------------

    def _relation(self, data: bytes) -> Relation:
        xid, pos = self._xid(data, "Relation")
        (oid,) = _unpack(OID, data, pos, "Relation")
        namespace, pos = _string(data, pos + 4, "Relation namespace")
        name, pos = _string(data, pos, "Relation name")
        identity, ncols = _unpack(REPLICA_IDENTITY_NCOLS, data, pos, "Relation")
        replica_identity = _REPLICA_IDENTITIES.get(identity)
        if replica_identity is None:
            raise DecodeError(f"Relation: unknown replica identity {describe_byte(identity)}")
        pos += REPLICA_IDENTITY_NCOLS.size
        columns = []
        for col in range(1, ncols + 1):
            what = f"Relation column {col} of {ncols}"
            (flags,) = _unpack(COLUMN_FLAGS, data, pos, what)
            if flags & ~_COLUMN_FLAGS:
                raise DecodeError(f"{what}: unknown flags 0x{flags:02x}")
            column_name, pos = _string(data, pos + 1, what)
            type_oid, type_modifier = _unpack(COLUMN_TYPE, data, pos, what)
            pos += COLUMN_TYPE.size
            columns.append(RelationColumn(bool(flags), column_name, type_oid, type_modifier))
        _end(data, pos, "Relation")
        return Relation(xid, oid, namespace, name, replica_identity, tuple(columns))

    def _type(self, data: bytes) -> Type:
        xid, pos = self._xid(data, "Type")
        (oid,) = _unpack(OID, data, pos, "Type")
        namespace, pos = _string(data, pos + 4, "Type namespace")
        name, pos = _string(data, pos, "Type name")
        _end(data, pos, "Type")
        return Type(xid, oid, namespace, name)

    # Row changes (the hot path) ----------------------------------------------------------

    def _row_head(self, data: bytes) -> tuple[int | None, int, int, int]:
        """(xid, relation oid, tuple marker, offset after the marker) of a row change."""
        if self._streaming:
            xid, oid, marker = STREAM_ROW_HEAD.unpack_from(data, 1)
            return xid, oid, marker, 1 + STREAM_ROW_HEAD.size
        oid, marker = ROW_HEAD.unpack_from(data, 1)
        return None, oid, marker, 1 + ROW_HEAD.size

    def _insert(self, data: bytes) -> Insert:
        xid, oid, marker, pos = self._row_head(data)
        if marker != _NEW:
            raise DecodeError(f"Insert: expected new tuple 'N', got {describe_byte(marker)}")
        new, pos = _tuple(data, pos, "Insert")
        if pos != len(data):
            _end(data, pos, "Insert")
        return Insert(xid, oid, new)

    def _update(self, data: bytes) -> Update:
        xid, oid, marker, pos = self._row_head(data)
        old_kind = _OLD_KINDS.get(marker)
        old = None
        if old_kind is not None:
            old, pos = _tuple(data, pos, "Update old")
            if pos >= len(data):
                raise DecodeError("Update: truncated before new tuple marker")
            marker = data[pos]
            pos += 1
        if marker != _NEW:
            raise DecodeError(f"Update: expected tuple marker 'N', got {describe_byte(marker)}")
        new, pos = _tuple(data, pos, "Update new")
        if pos != len(data):
            _end(data, pos, "Update")
        return Update(xid, oid, old_kind, old, new)

    def _delete(self, data: bytes) -> Delete:
        xid, oid, marker, pos = self._row_head(data)
        old_kind = _OLD_KINDS.get(marker)
        if old_kind is None:
            raise DecodeError(
                f"Delete: expected tuple marker 'K' or 'O', got {describe_byte(marker)}"
            )
        old, pos = _tuple(data, pos, "Delete")
        if pos != len(data):
            _end(data, pos, "Delete")
        return Delete(xid, oid, old_kind, old)

    def _truncate(self, data: bytes) -> Truncate:
        xid, pos = self._xid(data, "Truncate")
        count, options = _unpack(TRUNCATE_HEAD, data, pos, "Truncate")
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
        flags, lsn = _unpack(MESSAGE_HEAD, data, pos, "Message")
        if flags & ~_MESSAGE_FLAGS:
            raise DecodeError(f"Message: unknown flags 0x{flags:02x}")
        prefix, pos = _string(data, pos + MESSAGE_HEAD.size, "Message prefix")
        (length,) = _unpack(MESSAGE_LENGTH, data, pos, "Message")
        pos += MESSAGE_LENGTH.size
        if len(data) - pos != length:
            raise DecodeError(f"Message: content length {length}, have {len(data) - pos} bytes")
        return LogicalMessage(xid, bool(flags), Lsn(lsn), prefix, data[pos:])

    # Streamed transactions (protocol 2+) -------------------------------------------------

    def _stream_start(self, data: bytes) -> StreamStart:
        xid, first = _unpack(STREAM_START, data, 1, "StreamStart")
        _end(data, 1 + STREAM_START.size, "StreamStart")
        if first > 1:
            raise DecodeError(f"StreamStart: first-segment flag must be 0 or 1, got {first}")
        if self._streaming:
            raise DecodeError(f"StreamStart: xid {xid} while already inside a stream block")
        self._streaming = True
        return StreamStart(xid, bool(first))

    def _stream_stop(self, data: bytes) -> StreamStop:
        _end(data, 1, "StreamStop")
        if not self._streaming:
            raise DecodeError("StreamStop: not inside a stream block")
        self._streaming = False
        return StreamStop()

    def _stream_commit(self, data: bytes) -> StreamCommit:
        xid, flags, commit_lsn, end_lsn, ts = _unpack(STREAM_COMMIT, data, 1, "StreamCommit")
        _end(data, 1 + STREAM_COMMIT.size, "StreamCommit")
        return StreamCommit(xid, flags, Lsn(commit_lsn), Lsn(end_lsn), ts)

    def _stream_abort(self, data: bytes) -> StreamAbort:
        xid, subxid = _unpack(STREAM_ABORT, data, 1, "StreamAbort")
        pos = 1 + STREAM_ABORT.size
        if pos == len(data):
            return StreamAbort(xid, subxid, None, None)
        if self._proto_version < 4:
            _end(data, pos, "StreamAbort")
        abort_lsn, abort_ts = _unpack(STREAM_ABORT_INFO, data, pos, "StreamAbort abort info")
        _end(data, pos + STREAM_ABORT_INFO.size, "StreamAbort")
        return StreamAbort(xid, subxid, Lsn(abort_lsn), abort_ts)

    # Two-phase commit (protocol 3+) -------------------------------------------------------

    def _begin_prepare(self, data: bytes) -> BeginPrepare:
        prepare_lsn, end_lsn, ts, xid = _unpack(BEGIN_PREPARE, data, 1, "BeginPrepare")
        gid, pos = _string(data, 1 + BEGIN_PREPARE.size, "BeginPrepare gid")
        _end(data, pos, "BeginPrepare")
        return BeginPrepare(Lsn(prepare_lsn), Lsn(end_lsn), ts, xid, gid)

    def _prepare(self, data: bytes) -> Prepare:
        flags, lsn, end_lsn, ts, xid, gid = self._prepare_like(data, "Prepare")
        return Prepare(flags, lsn, end_lsn, ts, xid, gid)

    def _commit_prepared(self, data: bytes) -> CommitPrepared:
        flags, lsn, end_lsn, ts, xid, gid = self._prepare_like(data, "CommitPrepared")
        return CommitPrepared(flags, lsn, end_lsn, ts, xid, gid)

    def _stream_prepare(self, data: bytes) -> StreamPrepare:
        flags, lsn, end_lsn, ts, xid, gid = self._prepare_like(data, "StreamPrepare")
        return StreamPrepare(flags, lsn, end_lsn, ts, xid, gid)

    def _prepare_like(self, data: bytes, what: str) -> tuple[int, Lsn, Lsn, int, int, str]:
        """Prepare, Commit Prepared and Stream Prepare share one layout."""
        flags, lsn, end_lsn, ts, xid = _unpack(PREPARE, data, 1, what)
        gid, pos = _string(data, 1 + PREPARE.size, f"{what} gid")
        _end(data, pos, what)
        return flags, Lsn(lsn), Lsn(end_lsn), ts, xid, gid

    def _rollback_prepared(self, data: bytes) -> RollbackPrepared:
        flags, prep_end, rb_end, prep_ts, rb_ts, xid = _unpack(
            ROLLBACK_PREPARED, data, 1, "RollbackPrepared"
        )
        gid, pos = _string(data, 1 + ROLLBACK_PREPARED.size, "RollbackPrepared gid")
        _end(data, pos, "RollbackPrepared")
        return RollbackPrepared(flags, Lsn(prep_end), Lsn(rb_end), prep_ts, rb_ts, xid, gid)
