"""Unit tests of the pgoutput decoder on hand-built messages of every type and version."""

from __future__ import annotations

import contextlib
import copy
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdc.errors import DecodeError, ErrorKind
from cdc.protocol import (
    PG_EPOCH,
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryDatum,
    Commit,
    CommitPrepared,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    MessageTag,
    OldTupleKind,
    Origin,
    Prepare,
    Relation,
    RelationColumn,
    ReplicaIdentity,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    TupleMarker,
    TupleValue,
    Type,
    Update,
    datetime_to_pg_timestamp,
    pg_timestamp_to_datetime,
)
from cdc.protocol.lsn import Lsn

pytestmark = pytest.mark.unit

FUZZ = settings(database=None, deadline=None, max_examples=300)
GENERATED = settings(
    database=None, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow]
)

# ---------------------------------------------------------------------------------------
# Test-local wire builder, written from the protocol documentation.


def u8(v: int) -> bytes:
    return struct.pack(">B", v)


def u16(v: int) -> bytes:
    return struct.pack(">H", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def opt_xid(xid: int | None) -> bytes:
    return b"" if xid is None else u32(xid)


def tuple_bytes(values: TupleData) -> bytes:
    out = [u16(len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        elif v is UNCHANGED_TOAST:
            out.append(b"u")
        elif isinstance(v, BinaryDatum):
            out += [b"b", u32(len(v.data)), v.data]
        else:
            assert isinstance(v, bytes)
            out += [b"t", u32(len(v)), v]
    return b"".join(out)


def prepare_like(tag: bytes, m: Prepare | CommitPrepared | StreamPrepare) -> bytes:
    lsn = m.commit_lsn if isinstance(m, CommitPrepared) else m.prepare_lsn
    ts = m.commit_ts if isinstance(m, CommitPrepared) else m.prepare_ts
    return tag + u8(m.flags) + u64(lsn) + u64(m.end_lsn) + i64(ts) + u32(m.xid) + cstr(m.gid)


def encode(m: Message) -> bytes:
    match m:
        case Begin():
            return b"B" + u64(m.final_lsn) + i64(m.commit_ts) + u32(m.xid)
        case Commit():
            return b"C" + u8(m.flags) + u64(m.commit_lsn) + u64(m.end_lsn) + i64(m.commit_ts)
        case Origin():
            return b"O" + u64(m.commit_lsn) + cstr(m.name)
        case Relation():
            cols = b"".join(
                u8(c.is_key) + cstr(c.name) + u32(c.type_oid) + i32(c.type_modifier)
                for c in m.columns
            )
            return (
                b"R"
                + opt_xid(m.xid)
                + u32(m.oid)
                + cstr(m.namespace)
                + cstr(m.name)
                + m.replica_identity.encode()
                + u16(len(m.columns))
                + cols
            )
        case Type():
            return b"Y" + opt_xid(m.xid) + u32(m.oid) + cstr(m.namespace) + cstr(m.name)
        case Insert():
            return b"I" + opt_xid(m.xid) + u32(m.relation_oid) + b"N" + tuple_bytes(m.new)
        case Update():
            old = b"" if m.old_kind is None or m.old is None else m.old_kind.encode()
            old += b"" if m.old is None else tuple_bytes(m.old)
            head = b"U" + opt_xid(m.xid) + u32(m.relation_oid)
            return head + old + b"N" + tuple_bytes(m.new)
        case Delete():
            head = b"D" + opt_xid(m.xid) + u32(m.relation_oid)
            return head + m.old_kind.encode() + tuple_bytes(m.old)
        case Truncate():
            options = int(m.cascade) | (2 * int(m.restart_identity))
            oids = b"".join(u32(o) for o in m.relation_oids)
            return b"T" + opt_xid(m.xid) + u32(len(m.relation_oids)) + u8(options) + oids
        case LogicalMessage():
            head = b"M" + opt_xid(m.xid) + u8(m.transactional) + u64(m.lsn) + cstr(m.prefix)
            return head + u32(len(m.content)) + m.content
        case StreamStart():
            return b"S" + u32(m.xid) + u8(m.first_segment)
        case StreamStop():
            return b"E"
        case StreamCommit():
            return (
                b"c"
                + u32(m.xid)
                + u8(m.flags)
                + u64(m.commit_lsn)
                + u64(m.end_lsn)
                + i64(m.commit_ts)
            )
        case StreamAbort():
            info = b""
            if m.abort_lsn is not None and m.abort_ts is not None:
                info = u64(m.abort_lsn) + i64(m.abort_ts)
            return b"A" + u32(m.xid) + u32(m.subxid) + info
        case BeginPrepare():
            fixed = u64(m.prepare_lsn) + u64(m.end_lsn) + i64(m.prepare_ts) + u32(m.xid)
            return b"b" + fixed + cstr(m.gid)
        case Prepare():
            return prepare_like(b"P", m)
        case CommitPrepared():
            return prepare_like(b"K", m)
        case StreamPrepare():
            return prepare_like(b"p", m)
        case RollbackPrepared():
            fixed = u64(m.prepare_end_lsn) + u64(m.rollback_end_lsn)
            fixed += i64(m.prepare_ts) + i64(m.rollback_ts) + u32(m.xid)
            return b"r" + u8(m.flags) + fixed + cstr(m.gid)
    raise AssertionError(m)


XID_OPTIONAL = (Relation, Type, Insert, Update, Delete, Truncate, LogicalMessage)


def in_stream(m: Message) -> bool:
    """Whether `m` is only valid between Stream Start and Stream Stop."""
    return isinstance(m, StreamStop) or (isinstance(m, XID_OPTIONAL) and m.xid is not None)


def min_version(m: Message) -> int:
    if isinstance(m, StreamAbort) and m.abort_lsn is not None:
        return 4
    if isinstance(m, BeginPrepare | Prepare | CommitPrepared | RollbackPrepared | StreamPrepare):
        return 3
    if in_stream(m) or isinstance(m, StreamStart | StreamCommit | StreamAbort):
        return 2
    return 1


def decoder_for(m: Message, proto: int | None = None) -> Decoder:
    """A decoder in the state in which `m` can arrive."""
    decoder = Decoder(min_version(m) if proto is None else proto)
    if in_stream(m):
        decoder.decode(b"S" + u32(999) + u8(1))
    return decoder


# ---------------------------------------------------------------------------------------
# Samples of every message type, in and out of stream blocks.

L1, L2, L3 = Lsn.parse("16/B374D848"), Lsn.parse("16/B374D900"), Lsn.parse("0/1")
TS1, TS2 = 780_000_000_123_456, -5
ROW: TupleData = (b"1", None, UNCHANGED_TOAST, BinaryDatum(b"\x00\x01"), b"", b"caf\xc3\xa9")
KEY: TupleData = (b"1", None, None, None, None, None)
COLUMNS = (
    RelationColumn(True, "id", 23, -1),
    RelationColumn(False, "naïve name", 1043, 68),
    RelationColumn(True, "", 4_294_967_295, -2_147_483_648),
)

SAMPLES: dict[str, Message] = {
    "begin": Begin(L1, TS1, 1234),
    "commit": Commit(0, L1, L2, TS1),
    "origin": Origin(L3, "node_a"),
    "origin-empty-name": Origin(Lsn.ZERO, ""),
    "relation": Relation(None, 16384, "public", "orders", ReplicaIdentity.DEFAULT, COLUMNS),
    "relation-no-columns": Relation(None, 1, "", "t", ReplicaIdentity.NOTHING, ()),
    "relation-streamed": Relation(77, 16384, "s", "t", ReplicaIdentity.FULL, COLUMNS[:1]),
    "relation-index": Relation(None, 2, "s", "t", ReplicaIdentity.INDEX, COLUMNS[1:]),
    "type": Type(None, 70000, "public", "mood"),
    "type-streamed": Type(77, 70000, "public", "mood"),
    "insert": Insert(None, 16384, ROW),
    "insert-empty-tuple": Insert(None, 16384, ()),
    "insert-streamed": Insert(77, 16384, ROW),
    "update": Update(None, 16384, None, None, ROW),
    "update-key": Update(None, 16384, TupleMarker.KEY, KEY, ROW),
    "update-old": Update(None, 16384, TupleMarker.OLD, ROW, ROW),
    "update-streamed": Update(77, 16384, None, None, ROW),
    "update-old-streamed": Update(77, 16384, TupleMarker.OLD, ROW, (None,) * 6),
    "delete-key": Delete(None, 16384, TupleMarker.KEY, KEY),
    "delete-old": Delete(None, 16384, TupleMarker.OLD, ROW),
    "delete-streamed": Delete(77, 16384, TupleMarker.KEY, KEY),
    "truncate": Truncate(None, False, False, (16384,)),
    "truncate-cascade": Truncate(None, True, False, (1, 2, 3)),
    "truncate-restart": Truncate(None, False, True, (1,)),
    "truncate-both-streamed": Truncate(77, True, True, (1, 4_294_967_295)),
    "truncate-none": Truncate(None, False, False, ()),
    "message": LogicalMessage(None, False, L1, "audit", b"\x00payload\xff"),
    "message-transactional": LogicalMessage(None, True, L1, "", b""),
    "message-streamed": LogicalMessage(77, True, L1, "p", b"x"),
    "stream-start-first": StreamStart(77, True),
    "stream-start-later": StreamStart(77, False),
    "stream-stop": StreamStop(),
    "stream-commit": StreamCommit(77, 0, L1, L2, TS1),
    "stream-abort": StreamAbort(77, 78, None, None),
    "stream-abort-v4": StreamAbort(77, 77, L2, TS2),
    "begin-prepare": BeginPrepare(L1, L2, TS1, 1234, "gid-1"),
    "prepare": Prepare(0, L1, L2, TS1, 1234, "gid-1"),
    "commit-prepared": CommitPrepared(0, L1, L2, TS1, 1234, "gid-1"),
    "rollback-prepared": RollbackPrepared(0, L1, L2, TS1, TS2, 1234, "gid-ü"),
    "stream-prepare": StreamPrepare(0, L1, L2, TS1, 77, ""),
}
SAMPLE_IDS = list(SAMPLES)


def short_abort_prefix(m: Message, length: int) -> bool:
    """A v4 Stream Abort cut right after the subxid is itself a valid (short) Stream Abort."""
    return isinstance(m, StreamAbort) and m.abort_lsn is not None and length == 9


def test_samples_cover_every_message_tag() -> None:
    tags = {encode(m)[:1].decode() for m in SAMPLES.values()}
    assert tags == {t.value for t in MessageTag}


@pytest.mark.parametrize("name", SAMPLE_IDS)
def test_decodes_sample_at_every_supporting_version(name: str) -> None:
    m = SAMPLES[name]
    payload = encode(m)
    for proto in range(min_version(m), 5):
        assert decoder_for(m, proto).decode(payload) == m
        assert decoder_for(m, proto).decode(memoryview(b"!" + payload)[1:]) == m


@pytest.mark.parametrize("name", SAMPLE_IDS)
def test_every_truncation_raises(name: str) -> None:
    m = SAMPLES[name]
    payload = encode(m)
    for length in range(len(payload)):
        decoder = decoder_for(m, 4)
        if short_abort_prefix(m, length):
            assert decoder.decode(payload[:length]) == StreamAbort(77, 77, None, None)
            continue
        with pytest.raises(DecodeError):
            decoder.decode(payload[:length])


@pytest.mark.parametrize("name", SAMPLE_IDS)
@pytest.mark.parametrize("garbage", [b"\x00", b"\xff\xff\xff", b"n" * 17])
def test_trailing_bytes_raise(name: str, garbage: bytes) -> None:
    m = SAMPLES[name]
    with pytest.raises(DecodeError, match=r"trailing|length|need|have"):
        decoder_for(m, 4).decode(encode(m) + garbage)


# ---------------------------------------------------------------------------------------
# Byte strings written out by hand, independent of the builder above.


def test_begin_from_literal_bytes() -> None:
    payload = bytes.fromhex("42 00000016b374d848 0002c56e1b2fa240 000004d2")
    assert Decoder(1).decode(payload) == Begin(L1, 0x0002C56E1B2FA240, 1234)


def test_commit_from_literal_bytes() -> None:
    payload = bytes.fromhex("43 00 00000016b374d848 00000016b374d900 fffffffffffffffb")
    assert Decoder(1).decode(payload) == Commit(0, L1, L2, -5)


def test_insert_with_all_four_column_kinds_from_literal_bytes() -> None:
    payload = bytes.fromhex("49 00004000 4e 0004 6e 75 74000000023432 6200000003010203")
    m = Decoder(1).decode(payload)
    assert m == Insert(None, 16384, (None, UNCHANGED_TOAST, b"42", BinaryDatum(b"\x01\x02\x03")))
    assert isinstance(m, Insert)
    assert type(m.new[2]) is bytes


def test_relation_from_literal_bytes() -> None:
    payload = bytes.fromhex(
        "52 00004000 7075626c696300 7400 64 0002"
        " 01 696400 00000017 ffffffff"
        " 00 6e616d6500 00000413 00000044"
    )
    assert Decoder(1).decode(payload) == Relation(
        None,
        16384,
        "public",
        "t",
        ReplicaIdentity.DEFAULT,
        (RelationColumn(True, "id", 23, -1), RelationColumn(False, "name", 1043, 68)),
    )


def test_streamed_insert_from_literal_bytes() -> None:
    decoder = Decoder(2)
    assert decoder.decode(bytes.fromhex("53 0000004d 01")) == StreamStart(77, True)
    payload = bytes.fromhex("49 0000004d 00004000 4e 0001 74000000017a")
    assert decoder.decode(payload) == Insert(77, 16384, (b"z",))
    assert decoder.decode(b"E") == StreamStop()


def test_stream_abort_both_lengths_from_literal_bytes() -> None:
    short = bytes.fromhex("41 0000004d 0000004e")
    assert Decoder(2).decode(short) == StreamAbort(77, 78, None, None)
    assert Decoder(4).decode(short) == StreamAbort(77, 78, None, None)
    long = short + bytes.fromhex("00000016b374d848 0000000000000001")
    assert Decoder(4).decode(long) == StreamAbort(77, 78, L1, 1)


def test_rollback_prepared_from_literal_bytes() -> None:
    payload = bytes.fromhex(
        "72 00 00000016b374d848 00000016b374d900 0000000000000001 0000000000000002 0000000a 6700"
    )
    assert Decoder(3).decode(payload) == RollbackPrepared(0, L1, L2, 1, 2, 10, "g")


def test_truncate_from_literal_bytes() -> None:
    payload = bytes.fromhex("54 00000002 03 00004000 00004001")
    assert Decoder(1).decode(payload) == Truncate(None, True, True, (16384, 16385))


# ---------------------------------------------------------------------------------------
# Stream block state and protocol versions.


def test_stream_block_switches_xid_prefix_on_and_off() -> None:
    decoder = Decoder(2)
    outside = encode(Insert(None, 5, (b"a",)))
    inside = encode(Insert(9, 5, (b"a",)))
    assert decoder.decode(outside) == Insert(None, 5, (b"a",))
    assert not decoder.in_stream
    decoder.decode(encode(StreamStart(9, True)))
    assert decoder.in_stream
    assert decoder.decode(inside) == Insert(9, 5, (b"a",))
    decoder.decode(b"E")
    assert not decoder.in_stream
    assert decoder.decode(outside) == Insert(None, 5, (b"a",))
    assert decoder.decode(encode(StreamCommit(9, 0, L1, L2, TS1))) == StreamCommit(
        9, 0, L1, L2, TS1
    )


def test_nested_stream_start_raises() -> None:
    decoder = Decoder(2)
    decoder.decode(encode(StreamStart(9, True)))
    with pytest.raises(DecodeError, match="already inside"):
        decoder.decode(encode(StreamStart(10, True)))
    assert decoder.in_stream


def test_stream_stop_outside_block_raises() -> None:
    with pytest.raises(DecodeError, match="not inside"):
        Decoder(2).decode(b"E")


def test_stream_start_flag_must_be_boolean() -> None:
    with pytest.raises(DecodeError, match="StreamStart: first-segment flag"):
        Decoder(2).decode(b"S" + u32(1) + u8(2))


@pytest.mark.parametrize(
    ("name", "needed"),
    [("stream-start-first", 2), ("stream-commit", 2), ("prepare", 3), ("stream-prepare", 3)],
)
def test_messages_of_later_versions_are_rejected(name: str, needed: int) -> None:
    for proto in range(1, needed):
        with pytest.raises(DecodeError, match=f"needs protocol version >= {needed}"):
            Decoder(proto).decode(encode(SAMPLES[name]))


def test_stream_abort_info_only_in_version_4() -> None:
    with pytest.raises(DecodeError, match="StreamAbort: 16 unexpected trailing bytes"):
        Decoder(3).decode(encode(SAMPLES["stream-abort-v4"]))


@pytest.mark.parametrize("proto", [0, 5, -1])
def test_unsupported_protocol_version(proto: int) -> None:
    with pytest.raises(ValueError, match="proto_version"):
        Decoder(proto)


def test_proto_version_property() -> None:
    assert Decoder(3).proto_version == 3


# ---------------------------------------------------------------------------------------
# Error messages for malformed input.


def test_empty_payload() -> None:
    with pytest.raises(DecodeError, match="empty"):
        Decoder(1).decode(b"")


def test_unknown_tag_is_named() -> None:
    with pytest.raises(DecodeError, match=r"unknown pgoutput message tag 0x7a \('z'\)") as info:
        Decoder(4).decode(b"z\x00")
    assert info.value.kind is ErrorKind.DECODE
    with pytest.raises(DecodeError, match="tag 0x00"):
        Decoder(4).decode(b"\x00")


def test_truncated_tuple_names_the_column() -> None:
    values: TupleData = tuple(b"v%d" % i for i in range(10))
    payload = encode(Insert(None, 1, values))
    cut = len(encode(Insert(None, 1, values[:2]))) + 3  # inside the length of column 3
    with pytest.raises(DecodeError, match=r"^Insert: tuple truncated at column 3 of 10$"):
        Decoder(1).decode(payload[:cut])


def test_unknown_column_kind() -> None:
    payload = b"I" + u32(1) + b"N" + u16(2) + b"n" + b"x"
    with pytest.raises(DecodeError, match=r"Insert: unknown column kind 0x78 \('x'\) at column 2"):
        Decoder(1).decode(payload)


def test_insert_requires_new_tuple_marker() -> None:
    with pytest.raises(DecodeError, match="Insert: expected new tuple 'N'"):
        Decoder(1).decode(b"I" + u32(1) + b"K" + u16(0))


def test_update_requires_new_tuple_after_old() -> None:
    payload = b"U" + u32(1) + b"K" + u16(0) + b"K" + u16(0)
    with pytest.raises(DecodeError, match="Update: expected tuple marker 'N'"):
        Decoder(1).decode(payload)


def test_delete_requires_old_tuple_marker() -> None:
    with pytest.raises(DecodeError, match="Delete: expected tuple marker 'K' or 'O'"):
        Decoder(1).decode(b"D" + u32(1) + b"N" + u16(0))


def test_unknown_replica_identity() -> None:
    payload = b"R" + u32(1) + cstr("s") + cstr("t") + b"x" + u16(0)
    with pytest.raises(DecodeError, match="Relation: unknown replica identity"):
        Decoder(1).decode(payload)


def test_unknown_relation_column_flags() -> None:
    payload = b"R" + u32(1) + cstr("s") + cstr("t") + b"d" + u16(1) + u8(3) + cstr("c")
    with pytest.raises(DecodeError, match="Relation column 1 of 1: unknown flags 0x03"):
        Decoder(1).decode(payload + u32(23) + i32(-1))


def test_unknown_truncate_options() -> None:
    with pytest.raises(DecodeError, match="Truncate: unknown option flags 0x04"):
        Decoder(1).decode(b"T" + u32(0) + u8(4))


def test_unknown_message_flags() -> None:
    payload = b"M" + u8(2) + u64(1) + cstr("p") + u32(0)
    with pytest.raises(DecodeError, match="Message: unknown flags 0x02"):
        Decoder(1).decode(payload)


def test_message_content_length_mismatch() -> None:
    payload = b"M" + u8(0) + u64(1) + cstr("p") + u32(5) + b"abc"
    with pytest.raises(DecodeError, match="Message: content length 5, have 3 bytes"):
        Decoder(1).decode(payload)


def test_invalid_utf8_is_a_decode_error() -> None:
    payload = b"O" + u64(1) + b"\xff\xfe\x00"
    with pytest.raises(DecodeError, match="Origin name: invalid UTF-8") as info:
        Decoder(1).decode(payload)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_unterminated_string() -> None:
    with pytest.raises(DecodeError, match="Type name: string not NUL-terminated"):
        Decoder(1).decode(b"Y" + u32(1) + cstr("public") + b"mood")


# ---------------------------------------------------------------------------------------
# Value types.


def test_unchanged_toast_sentinel() -> None:
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert UNCHANGED_TOAST
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST


def test_messages_are_frozen_and_hashable() -> None:
    m = SAMPLES["update-old"]
    assert isinstance(m, Update)
    with pytest.raises(AttributeError):
        m.xid = 3  # type: ignore[misc]
    assert hash(m) == hash(copy.deepcopy(m))


def test_pg_timestamp_conversion() -> None:
    assert pg_timestamp_to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC) == PG_EPOCH
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    us = datetime_to_pg_timestamp(moment)
    assert us == 768_294_489_123_456  # (date +%s of the moment - 946684800) * 10**6 + us
    assert pg_timestamp_to_datetime(us) == moment
    assert pg_timestamp_to_datetime(us).tzinfo is UTC
    assert pg_timestamp_to_datetime(-1) == PG_EPOCH - timedelta(microseconds=1)
    plus_two = timezone(timedelta(hours=2))
    assert datetime_to_pg_timestamp(moment.astimezone(plus_two)) == us


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        datetime_to_pg_timestamp(datetime(2024, 1, 1))


@settings(database=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_pg_timestamp_round_trip(moment: datetime) -> None:
    assert pg_timestamp_to_datetime(datetime_to_pg_timestamp(moment)) == moment


# ---------------------------------------------------------------------------------------
# Generated messages and fuzzing.

u32s = st.integers(0, 2**32 - 1)
i32s = st.integers(-(2**31), 2**31 - 1)
i64s = st.integers(-(2**63), 2**63 - 1)
lsns = st.integers(0, 2**64 - 1).map(Lsn)
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
column_values: st.SearchStrategy[TupleValue] = st.one_of(
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.binary(max_size=6),
    st.binary(max_size=6).map(BinaryDatum),
)
tuples: st.SearchStrategy[TupleData] = st.lists(column_values, max_size=5).map(tuple)
opt_xids = st.none() | u32s
old_kinds: st.SearchStrategy[OldTupleKind] = st.sampled_from((TupleMarker.KEY, TupleMarker.OLD))


@st.composite
def updates(draw: st.DrawFn) -> Update:
    kind = draw(st.none() | old_kinds)
    old = None if kind is None else draw(tuples)
    return Update(draw(opt_xids), draw(u32s), kind, old, draw(tuples))


@st.composite
def stream_aborts(draw: st.DrawFn) -> StreamAbort:
    if draw(st.booleans()):
        return StreamAbort(draw(u32s), draw(u32s), draw(lsns), draw(i64s))
    return StreamAbort(draw(u32s), draw(u32s), None, None)


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Begin, lsns, i64s, u32s),
    st.builds(Commit, st.just(0), lsns, lsns, i64s),
    st.builds(Origin, lsns, names),
    st.builds(
        Relation,
        opt_xids,
        u32s,
        names,
        names,
        st.sampled_from(ReplicaIdentity),
        st.lists(st.builds(RelationColumn, st.booleans(), names, u32s, i32s), max_size=4).map(
            tuple
        ),
    ),
    st.builds(Type, opt_xids, u32s, names, names),
    st.builds(Insert, opt_xids, u32s, tuples),
    updates(),
    st.builds(Delete, opt_xids, u32s, old_kinds, tuples),
    st.builds(
        Truncate, opt_xids, st.booleans(), st.booleans(), st.lists(u32s, max_size=4).map(tuple)
    ),
    st.builds(LogicalMessage, opt_xids, st.booleans(), lsns, names, st.binary(max_size=8)),
    st.builds(StreamStart, u32s, st.booleans()),
    st.just(StreamStop()),
    st.builds(StreamCommit, u32s, st.just(0), lsns, lsns, i64s),
    stream_aborts(),
    st.builds(BeginPrepare, lsns, lsns, i64s, u32s, names),
    st.builds(Prepare, st.just(0), lsns, lsns, i64s, u32s, names),
    st.builds(CommitPrepared, st.just(0), lsns, lsns, i64s, u32s, names),
    st.builds(RollbackPrepared, st.just(0), lsns, lsns, i64s, i64s, u32s, names),
    st.builds(StreamPrepare, st.just(0), lsns, lsns, i64s, u32s, names),
)


@GENERATED
@given(messages, st.binary(min_size=1, max_size=20))
def test_generated_message_round_trip_truncation_and_trailing_bytes(
    m: Message, garbage: bytes
) -> None:
    payload = encode(m)
    assert decoder_for(m).decode(payload) == m
    for length in range(len(payload)):
        if short_abort_prefix(m, length):
            continue
        with pytest.raises(DecodeError):
            decoder_for(m, 4).decode(payload[:length])
    assume(not (isinstance(m, StreamAbort) and m.abort_lsn is None and len(garbage) == 16))
    with pytest.raises(DecodeError):
        decoder_for(m, 4).decode(payload + garbage)


tag_bytes = st.sampled_from([t.encode() for t in MessageTag])


@FUZZ
@given(
    st.integers(1, 4),
    st.booleans(),
    st.one_of(st.binary(max_size=64), st.tuples(tag_bytes, st.binary(max_size=64)).map(b"".join)),
)
def test_random_bytes_raise_only_decode_error(proto: int, streaming: bool, data: bytes) -> None:
    decoder = Decoder(proto)
    if streaming and proto >= 2:
        decoder.decode(b"S" + u32(1) + u8(1))
    with contextlib.suppress(DecodeError):
        decoder.decode(data)


@FUZZ
@given(messages, st.data())
def test_corrupted_messages_raise_only_decode_error(m: Message, data: st.DataObject) -> None:
    payload = bytearray(encode(m))
    position = data.draw(st.integers(0, len(payload) - 1))
    payload[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        decoder_for(m, 4).decode(bytes(payload))
