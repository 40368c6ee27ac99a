"""Immutable types for every pgoutput message (protocol versions 1-4) and their timestamps.

Timestamps are kept as the raw wire value: microseconds since 2000-01-01 00:00 UTC, the
Postgres epoch. `pg_timestamp_to_datetime` and `datetime_to_pg_timestamp` convert.
Tuple data is a plain tuple of `TupleValue`: `None` (SQL NULL), `UNCHANGED_TOAST`, the
column's text representation as raw `bytes`, or a `BinaryDatum`. Row changes (Insert,
Update, Delete) are named tuples: one is built per changed row, so they must be cheap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, NamedTuple, TypeAlias

from cdc.protocol.lsn import Lsn
from cdc.protocol.tags import ReplicaIdentity, TupleMarker

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)


def pg_timestamp_to_datetime(us: int) -> datetime:
    """Microseconds since the Postgres epoch -> aware UTC datetime.

    Raises OverflowError for values outside `datetime`'s range (e.g. +/-infinity).
    """
    return PG_EPOCH + timedelta(microseconds=us)


def datetime_to_pg_timestamp(dt: datetime) -> int:
    """Aware datetime -> microseconds since the Postgres epoch (exact, no float rounding)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware: {dt!r}")
    return (dt - PG_EPOCH) // _ONE_MICROSECOND


class UnchangedToast(enum.Enum):
    """Type of the `UNCHANGED_TOAST` sentinel: a TOASTed value the server did not resend."""

    UNCHANGED_TOAST = "unchanged_toast"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = UnchangedToast.UNCHANGED_TOAST


@dataclass(frozen=True, slots=True)
class BinaryDatum:
    """A column value sent in the type's binary send/recv format."""

    data: bytes


TupleValue: TypeAlias = bytes | BinaryDatum | Literal[UnchangedToast.UNCHANGED_TOAST] | None
TupleData: TypeAlias = tuple[TupleValue, ...]
OldTupleKind: TypeAlias = Literal[TupleMarker.KEY, TupleMarker.OLD]


class Begin(NamedTuple):
    """A named tuple, as row changes are: one Begin and one Commit come per transaction,
    and an application's transactions are mostly of one or a few rows."""

    final_lsn: Lsn
    commit_ts: int
    xid: int


class Commit(NamedTuple):
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: Lsn
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: ReplicaIdentity
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    xid: int | None
    oid: int
    namespace: str
    name: str


class Insert(NamedTuple):
    xid: int | None
    relation_oid: int
    new: TupleData


class Update(NamedTuple):
    xid: int | None
    relation_oid: int
    old_kind: OldTupleKind | None
    old: TupleData | None
    new: TupleData


class Delete(NamedTuple):
    xid: int | None
    relation_oid: int
    old_kind: OldTupleKind
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    xid: int | None
    cascade: bool
    restart_identity: bool
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    xid: int | None
    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """`abort_lsn`/`abort_ts` are sent only by protocol 4 with parallel streaming."""

    xid: int
    subxid: int
    abort_lsn: Lsn | None
    abort_ts: int | None


@dataclass(frozen=True, slots=True)
class BeginPrepare:
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_ts: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class Prepare:
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_ts: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared:
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    flags: int
    prepare_end_lsn: Lsn
    rollback_end_lsn: Lsn
    prepare_ts: int
    rollback_ts: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepare:
    flags: int
    prepare_lsn: Lsn
    end_lsn: Lsn
    prepare_ts: int
    xid: int
    gid: str


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)
