"""Unit tests of CopyData framing: XLogData and keepalive decoding, status update encoding."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.errors import DecodeError
from cdc.protocol import Keepalive, XLogData, decode_frame, encode_standby_status
from cdc.protocol.lsn import Lsn

pytestmark = pytest.mark.unit

L1, L2 = Lsn.parse("16/B374D848"), Lsn.parse("16/B374D900")


def xlog_data(start: int, end: int, send_time: int, payload: bytes) -> bytes:
    return b"w" + struct.pack(">QQq", start, end, send_time) + payload


def keepalive(end: int, send_time: int, reply: int) -> bytes:
    return b"k" + struct.pack(">QqB", end, send_time, reply)


def test_xlog_data_from_literal_bytes() -> None:
    frame = bytes.fromhex(
        "77 00000016b374d848 00000016b374d900 0002c56e1b2fa240 42 00000016b374d848"
    )
    decoded = decode_frame(frame)
    assert decoded == XLogData(L1, L2, 0x0002C56E1B2FA240, bytes.fromhex("4200000016b374d848"))
    assert isinstance(decoded, XLogData)
    assert type(decoded.wal_start) is Lsn


def test_xlog_data_from_memoryview_with_empty_payload() -> None:
    frame = memoryview(b"..." + xlog_data(1, 2, -3, b""))[3:]
    assert decode_frame(frame) == XLogData(Lsn(1), Lsn(2), -3, b"")


def test_xlog_data_payload_is_bytes_from_memoryview() -> None:
    decoded = decode_frame(memoryview(xlog_data(1, 2, 3, b"Epayload")))
    assert isinstance(decoded, XLogData)
    assert type(decoded.payload) is bytes
    assert decoded.payload == b"Epayload"


def test_keepalive_from_literal_bytes() -> None:
    frame = bytes.fromhex("6b 00000016b374d900 0000000000000064 01")
    assert decode_frame(frame) == Keepalive(L2, 100, True)
    assert decode_frame(keepalive(5, -1, 0)) == Keepalive(Lsn(5), -1, False)


def test_keepalive_reply_flag_must_be_boolean() -> None:
    with pytest.raises(DecodeError, match="Keepalive: reply-requested flag"):
        decode_frame(keepalive(5, 1, 2))


@pytest.mark.parametrize("frame", [keepalive(1, 2, 1), xlog_data(1, 2, 3, b"")])
def test_truncated_frames_raise(frame: bytes) -> None:
    for length in range(len(frame)):
        with pytest.raises(DecodeError):
            decode_frame(frame[:length])


def test_keepalive_with_trailing_bytes_raises() -> None:
    with pytest.raises(DecodeError, match="Keepalive: expected 18 bytes, got 19"):
        decode_frame(keepalive(1, 2, 0) + b"\x00")


def test_empty_frame() -> None:
    with pytest.raises(DecodeError, match="CopyData: empty frame"):
        decode_frame(b"")


@pytest.mark.parametrize("tag", [b"r", b"x", b"\x00"])
def test_unknown_frame_tag_is_named(tag: bytes) -> None:
    with pytest.raises(DecodeError, match=rf"CopyData: unknown frame tag 0x{tag[0]:02x}"):
        decode_frame(tag + bytes(17))


def test_standby_status_matches_literal_bytes() -> None:
    encoded = encode_standby_status(L2, L1, Lsn.ZERO, 0x0002C56E1B2FA240, reply_requested=True)
    assert encoded == bytes.fromhex(
        "72 00000016b374d900 00000016b374d848 0000000000000000 0002c56e1b2fa240 01"
    )
    assert len(encoded) == 34


def test_standby_status_reply_defaults_to_false() -> None:
    encoded = encode_standby_status(Lsn(1), Lsn(2), Lsn(3), -1)
    assert encoded == b"r" + bytes.fromhex(
        "0000000000000001 0000000000000002 0000000000000003 ffffffffffffffff 00"
    )


def test_standby_status_out_of_range_raises_value_error() -> None:
    with pytest.raises(ValueError, match="standby status update"):
        encode_standby_status(Lsn(1), Lsn(1), Lsn(1), 2**63)


lsns = st.integers(0, 2**64 - 1).map(Lsn)
i64s = st.integers(-(2**63), 2**63 - 1)


@settings(database=None)
@given(lsns, lsns, lsns, i64s, st.booleans())
def test_standby_status_layout(
    write: Lsn, flush: Lsn, apply: Lsn, send_time: int, reply: bool
) -> None:
    encoded = encode_standby_status(write, flush, apply, send_time, reply)
    assert struct.unpack(">cQQQq?", encoded) == (b"r", write, flush, apply, send_time, reply)


@settings(database=None)
@given(lsns, lsns, i64s, st.binary(max_size=32))
def test_xlog_data_round_trip(start: Lsn, end: Lsn, send_time: int, payload: bytes) -> None:
    assert decode_frame(xlog_data(start, end, send_time, payload)) == XLogData(
        start, end, send_time, payload
    )


@settings(database=None, max_examples=300)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_decode_error(frame: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(frame)


@settings(database=None, max_examples=300)
@given(st.sampled_from([b"w", b"k"]), st.binary(max_size=40))
def test_random_bodies_raise_only_decode_error(tag: bytes, body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(tag + body)
