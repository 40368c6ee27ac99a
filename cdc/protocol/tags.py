"""Named constants for every tag byte and flag of the pgoutput and replication protocols."""

from __future__ import annotations

import enum
from typing import Final


class MessageTag(enum.StrEnum):
    """First byte of a pgoutput message (inside an XLogData payload)."""

    BEGIN = "B"
    COMMIT = "C"
    ORIGIN = "O"
    RELATION = "R"
    TYPE = "Y"
    INSERT = "I"
    UPDATE = "U"
    DELETE = "D"
    TRUNCATE = "T"
    MESSAGE = "M"
    STREAM_START = "S"
    STREAM_STOP = "E"
    STREAM_COMMIT = "c"
    STREAM_ABORT = "A"
    BEGIN_PREPARE = "b"
    PREPARE = "P"
    COMMIT_PREPARED = "K"
    ROLLBACK_PREPARED = "r"
    STREAM_PREPARE = "p"

    @property
    def byte(self) -> int:
        """The tag as the integer value of its byte."""
        return ord(self.value)


class ColumnKind(enum.StrEnum):
    """Kind byte that starts each column of a TupleData block."""

    NULL = "n"
    UNCHANGED_TOAST = "u"
    TEXT = "t"
    BINARY = "b"


class TupleMarker(enum.StrEnum):
    """Byte announcing which tuple follows in Insert, Update and Delete."""

    NEW = "N"
    KEY = "K"
    OLD = "O"


class FrameTag(enum.StrEnum):
    """First byte of a CopyData message on a replication connection."""

    XLOG_DATA = "w"
    KEEPALIVE = "k"
    STANDBY_STATUS_UPDATE = "r"


class ReplicaIdentity(enum.StrEnum):
    """`pg_class.relreplident` as sent in a Relation message."""

    DEFAULT = "d"
    NOTHING = "n"
    FULL = "f"
    INDEX = "i"


class TruncateOption(enum.IntFlag):
    """Bits of the option byte of a Truncate message."""

    CASCADE = 1
    RESTART_IDENTITY = 2


class RelationColumnFlag(enum.IntFlag):
    """Bits of the per-column flag byte of a Relation message."""

    KEY = 1


class LogicalMessageFlag(enum.IntFlag):
    """Bits of the flag byte of a logical decoding Message."""

    TRANSACTIONAL = 1


STREAM_FIRST_SEGMENT: Final = 1
"""Value of the Stream Start flag byte for the first segment of a transaction."""


MESSAGE_NAMES: Final = {tag: tag.name.title().replace("_", "") for tag in MessageTag}
"""Each message's name as used in error messages: `MessageTag.STREAM_ABORT` -> "StreamAbort"."""

MIN_PROTO_VERSION: Final = {
    MessageTag.STREAM_START: 2,
    MessageTag.STREAM_STOP: 2,
    MessageTag.STREAM_COMMIT: 2,
    MessageTag.STREAM_ABORT: 2,
    MessageTag.BEGIN_PREPARE: 3,
    MessageTag.PREPARE: 3,
    MessageTag.COMMIT_PREPARED: 3,
    MessageTag.ROLLBACK_PREPARED: 3,
    MessageTag.STREAM_PREPARE: 3,
}
"""Lowest pgoutput `proto_version` whose server may send each tag; absent tags need 1."""


def describe_byte(value: int) -> str:
    """A tag byte for error messages: `0x49 ('I')`, or `0x00` when not printable."""
    return f"0x{value:02x} ({chr(value)!r})" if 0x20 <= value < 0x7F else f"0x{value:02x}"
