"""CopyData framing of the streaming replication protocol: XLogData, keepalive, status update."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from struct import Struct
from typing import Final

from cdc.errors import DecodeError
from cdc.protocol.lsn import Lsn
from cdc.protocol.tags import FrameTag, describe_byte

XLOG_DATA_HEAD: Final = Struct(">QQq")  # after 'w': wal start, wal end, send time
KEEPALIVE: Final = Struct(">QqB")  # after 'k': wal end, send time, reply requested
STANDBY_STATUS: Final = Struct(">cQQQqB")  # 'r', write, flush, apply, send time, reply

_XLOG_DATA: Final = ord(FrameTag.XLOG_DATA)
_KEEPALIVE: Final = ord(FrameTag.KEEPALIVE)
_STATUS_TAG: Final = FrameTag.STANDBY_STATUS_UPDATE.encode()


@dataclass(frozen=True, slots=True)
class XLogData:
    """WAL data from the server; `payload` is one pgoutput message."""

    wal_start: Lsn
    wal_end: Lsn
    send_time: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Primary keepalive; `reply_requested` asks for an immediate standby status update."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool


Frame = XLogData | Keepalive


def decode_frame(buf: bytes | memoryview) -> Frame:
    """Decode one CopyData message from the server; raises `DecodeError` if malformed."""
    if not buf:
        raise DecodeError("CopyData: empty frame")
    tag = buf[0]
    if tag == _XLOG_DATA:
        if len(buf) < 1 + XLOG_DATA_HEAD.size:
            raise DecodeError(
                f"XLogData: header truncated, need {1 + XLOG_DATA_HEAD.size} bytes, have {len(buf)}"
            )
        wal_start, wal_end, send_time = XLOG_DATA_HEAD.unpack_from(buf, 1)
        payload = buf[1 + XLOG_DATA_HEAD.size :]
        return XLogData(
            Lsn(wal_start),
            Lsn(wal_end),
            send_time,
            payload if isinstance(payload, bytes) else bytes(payload),
        )
    if tag == _KEEPALIVE:
        if len(buf) != 1 + KEEPALIVE.size:
            raise DecodeError(f"Keepalive: expected {1 + KEEPALIVE.size} bytes, got {len(buf)}")
        wal_end, send_time, reply = KEEPALIVE.unpack_from(buf, 1)
        if reply > 1:
            raise DecodeError(f"Keepalive: reply-requested flag must be 0 or 1, got {reply}")
        return Keepalive(Lsn(wal_end), send_time, bool(reply))
    raise DecodeError(f"CopyData: unknown frame tag {describe_byte(tag)}")


def encode_standby_status(
    write: Lsn, flush: Lsn, apply: Lsn, send_time: int, reply_requested: bool = False
) -> bytes:
    """Standby status update ('r'): positions written, flushed and applied, and the clock."""
    try:
        return STANDBY_STATUS.pack(_STATUS_TAG, write, flush, apply, send_time, reply_requested)
    except struct.error as exc:
        raise ValueError(f"standby status update: field out of range ({exc})") from exc
