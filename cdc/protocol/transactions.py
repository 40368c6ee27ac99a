"""Decoding the messages that bound a transaction: Begin, Commit and Origin, Stream Commit
(protocol 2+), and two-phase commit's Begin Prepare, Prepare, Commit Prepared, Rollback
Prepared and Stream Prepare (protocol 3+). Each has a fixed layout and no leading xid, so
decoding one needs no state: bytes in (tag byte first), message out.
"""

from __future__ import annotations

import functools
from struct import Struct
from typing import Final

from cdc.protocol.fields import expect_end, read_string, unpack
from cdc.protocol.lsn import Lsn
from cdc.protocol.messages import (
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Origin,
    Prepare,
    RollbackPrepared,
    StreamCommit,
    StreamPrepare,
)

# Fixed parts, all big-endian, all starting right after the tag byte.
BEGIN: Final = Struct(">QqI")  # final lsn, commit ts, xid
COMMIT: Final = Struct(">BQQq")  # flags, commit lsn, end lsn, commit ts
ORIGIN_LSN: Final = Struct(">Q")  # commit lsn; the name string follows
STREAM_COMMIT: Final = Struct(">IBQQq")  # xid, flags, commit lsn, end lsn, commit ts
BEGIN_PREPARE: Final = Struct(">QQqI")  # prepare lsn, end lsn, prepare ts, xid; gid follows
PREPARE: Final = Struct(">BQQqI")  # flags, lsn, end lsn, ts, xid; gid follows
ROLLBACK_PREPARED: Final = Struct(">BQQqqI")  # flags, prep end, rb end, prep ts, rb ts, xid


# Without the Python-level constructors' checks: an unsigned 64-bit field is always a
# valid LSN, and the fields come in order. One Begin and one Commit per transaction.
_lsn: Final = functools.partial(int.__new__, Lsn)
_begin: Final = functools.partial(tuple.__new__, Begin)
_commit: Final = functools.partial(tuple.__new__, Commit)


def begin(data: bytes) -> Begin:
    if len(data) != 1 + BEGIN.size:  # truncated or too long: say which
        unpack(BEGIN, data, 1, "Begin")
        expect_end(data, 1 + BEGIN.size, "Begin")
    final_lsn, commit_ts, xid = BEGIN.unpack_from(data, 1)
    return _begin((_lsn(final_lsn), commit_ts, xid))


def commit(data: bytes) -> Commit:
    if len(data) != 1 + COMMIT.size:
        unpack(COMMIT, data, 1, "Commit")
        expect_end(data, 1 + COMMIT.size, "Commit")
    flags, commit_lsn, end_lsn, commit_ts = COMMIT.unpack_from(data, 1)
    return _commit((flags, _lsn(commit_lsn), _lsn(end_lsn), commit_ts))


def origin(data: bytes) -> Origin:
    (commit_lsn,) = unpack(ORIGIN_LSN, data, 1, "Origin")
    name, pos = read_string(data, 1 + ORIGIN_LSN.size, "Origin name")
    expect_end(data, pos, "Origin")
    return Origin(Lsn(commit_lsn), name)


def stream_commit(data: bytes) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, ts = unpack(STREAM_COMMIT, data, 1, "StreamCommit")
    expect_end(data, 1 + STREAM_COMMIT.size, "StreamCommit")
    return StreamCommit(xid, flags, Lsn(commit_lsn), Lsn(end_lsn), ts)


def begin_prepare(data: bytes) -> BeginPrepare:
    prepare_lsn, end_lsn, ts, xid = unpack(BEGIN_PREPARE, data, 1, "BeginPrepare")
    gid, pos = read_string(data, 1 + BEGIN_PREPARE.size, "BeginPrepare gid")
    expect_end(data, pos, "BeginPrepare")
    return BeginPrepare(Lsn(prepare_lsn), Lsn(end_lsn), ts, xid, gid)


def prepare(data: bytes) -> Prepare:
    flags, lsn, end_lsn, ts, xid, gid = _prepare_like(data, "Prepare")
    return Prepare(flags, lsn, end_lsn, ts, xid, gid)


def commit_prepared(data: bytes) -> CommitPrepared:
    flags, lsn, end_lsn, ts, xid, gid = _prepare_like(data, "CommitPrepared")
    return CommitPrepared(flags, lsn, end_lsn, ts, xid, gid)


def stream_prepare(data: bytes) -> StreamPrepare:
    flags, lsn, end_lsn, ts, xid, gid = _prepare_like(data, "StreamPrepare")
    return StreamPrepare(flags, lsn, end_lsn, ts, xid, gid)


def _prepare_like(data: bytes, what: str) -> tuple[int, Lsn, Lsn, int, int, str]:
    """Prepare, Commit Prepared and Stream Prepare share one layout."""
    flags, lsn, end_lsn, ts, xid = unpack(PREPARE, data, 1, what)
    gid, pos = read_string(data, 1 + PREPARE.size, f"{what} gid")
    expect_end(data, pos, what)
    return flags, Lsn(lsn), Lsn(end_lsn), ts, xid, gid


def rollback_prepared(data: bytes) -> RollbackPrepared:
    flags, prep_end, rb_end, prep_ts, rb_ts, xid = unpack(
        ROLLBACK_PREPARED, data, 1, "RollbackPrepared"
    )
    gid, pos = read_string(data, 1 + ROLLBACK_PREPARED.size, "RollbackPrepared gid")
    expect_end(data, pos, "RollbackPrepared")
    return RollbackPrepared(flags, Lsn(prep_end), Lsn(rb_end), prep_ts, rb_ts, xid, gid)
