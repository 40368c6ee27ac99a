"""The C row-change parser gives exactly what the Python decoder gives, and nothing for
bad input (the Python decoder then says what is wrong)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.errors import DecodeError
from cdc.protocol import (
    UNCHANGED_TOAST,
    BinaryDatum,
    Decoder,
    Delete,
    Insert,
    TupleValue,
    Update,
)
from cdc.protocol.fields import read_tuple
from cdc.protocol.rows import row_parser
from cdc.protocol.tags import TupleMarker
from tests.unit.test_pgoutput_decoder import encode as encode_message
from tests.unit.test_pgoutput_decoder import tuple_bytes

pytestmark = pytest.mark.unit

try:
    from cdc.protocol._speedups import parse_row
except ImportError as exc:  # the package was installed without building its C part
    raise ImportError(
        "cdc.protocol._speedups is not built: reinstall with a C compiler available "
        "(`make install`)"
    ) from exc

VALUE: st.SearchStrategy[TupleValue] = (
    st.binary(max_size=40)
    | st.none()
    | st.just(UNCHANGED_TOAST)
    | st.binary(max_size=8).map(BinaryDatum)
)


def encode(values: list[TupleValue]) -> bytes:
    return tuple_bytes(tuple(values))


def in_c(tuple_data: bytes) -> object:
    """An Insert carrying `tuple_data`, parsed in C."""
    message = b"I" + bytes(4) + b"N" + tuple_data
    return parse_row(Insert, Update, Delete, TupleMarker.KEY, TupleMarker.OLD,
                     UNCHANGED_TOAST, BinaryDatum, False, message)  # fmt: skip


def test_the_decoder_uses_it() -> None:
    parser = row_parser()
    assert parser is not None and parser.func is parse_row  # type: ignore[attr-defined]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=5), st.lists(VALUE, max_size=12), st.binary(max_size=5))
def test_same_values_and_end_as_python(
    before: bytes, values: list[TupleValue], after: bytes
) -> None:
    data = before + encode(values) + after
    expected = read_tuple(data, len(before), "Insert")
    assert expected == (tuple(values), len(data) - len(after))
    assert in_c(encode(values)) == Insert(None, 0, expected[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(VALUE, min_size=1, max_size=6), st.data())
def test_a_cut_tuple_is_none_and_python_says_why(
    values: list[TupleValue], data: st.DataObject
) -> None:
    whole = encode(values)
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert in_c(whole[:cut]) is None
    with pytest.raises(DecodeError, match="truncated"):
        read_tuple(whole[:cut], 0, "Insert")


def test_an_unknown_column_kind_is_none() -> None:
    data = struct.pack(">H", 2) + b"n" + b"x"
    assert in_c(data) is None
    with pytest.raises(DecodeError, match="unknown column kind"):
        read_tuple(data, 0, "Insert")


VALUES = st.lists(VALUE, max_size=6).map(tuple)
XID = st.none() | st.integers(0, 2**32 - 1)
OID = st.integers(0, 2**32 - 1)
OLD_KIND = st.sampled_from([TupleMarker.KEY, TupleMarker.OLD])
ROW_CHANGE = (
    st.builds(Insert, XID, OID, VALUES)
    | st.builds(lambda x, o, k, old, new: Update(x, o, k, old, new), XID, OID, OLD_KIND,
                VALUES, VALUES)
    | st.builds(lambda x, o, new: Update(x, o, None, None, new), XID, OID, VALUES)
    | st.builds(Delete, XID, OID, OLD_KIND, VALUES)
)  # fmt: skip


def python_decoder(streaming: bool) -> Decoder:
    decoder = Decoder(proto_version=2)
    decoder._streaming = streaming
    return decoder


@settings(max_examples=400, deadline=None)
@given(ROW_CHANGE)
def test_row_changes_as_the_python_decoder_decodes_them(
    message: Insert | Update | Delete,
) -> None:
    data = encode_message(message)
    streaming = message.xid is not None
    parser = row_parser()
    assert parser is not None
    parsed = parser(streaming, data)
    assert parsed == message and type(parsed) is type(message)
    handler = {Insert: "_insert", Update: "_update", Delete: "_delete"}[type(message)]
    assert getattr(python_decoder(streaming), handler)(data) == parsed


@settings(max_examples=300, deadline=None)
@given(ROW_CHANGE, st.data())
def test_a_cut_or_padded_row_change_is_none(
    message: Insert | Update | Delete, data: st.DataObject
) -> None:
    whole = encode_message(message)
    streaming = message.xid is not None
    parser = row_parser()
    assert parser is not None
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert parser(streaming, whole[:cut]) is None
    assert parser(streaming, whole + data.draw(st.binary(min_size=1, max_size=3))) is None
    with pytest.raises(DecodeError):
        python_decoder(streaming).decode(whole[:cut])


def test_other_messages_are_left_to_python() -> None:
    parser = row_parser()
    assert parser is not None
    assert parser(False, b"B" + bytes(20)) is None
    assert parser(False, b"") is None
    assert parser(False, b"D" + bytes(4) + b"N" + bytes(2)) is None, "a delete needs K or O"
