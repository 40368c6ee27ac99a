"""The C tuple parser gives exactly what the Python one gives, and nothing for bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.errors import DecodeError
from cdc.pgoutput import UNCHANGED_TOAST, BinaryDatum, TupleValue
from cdc.pgoutput.decoder import _tuple_in_python, tuple_parser
from tests.unit.test_pgoutput_decoder import tuple_bytes

pytestmark = pytest.mark.unit

try:
    from cdc.pgoutput._speedups import parse_tuple
except ImportError as exc:  # the package was installed without building its C part
    raise ImportError(
        "cdc.pgoutput._speedups is not built: reinstall with a C compiler available "
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


def test_the_decoder_uses_it() -> None:
    assert tuple_parser() is parse_tuple


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=5), st.lists(VALUE, max_size=12), st.binary(max_size=5))
def test_same_values_and_end_as_python(
    before: bytes, values: list[TupleValue], after: bytes
) -> None:
    data = before + encode(values) + after
    expected = _tuple_in_python(data, len(before), "Insert")
    assert expected == (tuple(values), len(data) - len(after))
    assert parse_tuple(data, len(before), UNCHANGED_TOAST, BinaryDatum) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(VALUE, min_size=1, max_size=6), st.data())
def test_a_cut_tuple_is_none_and_python_says_why(
    values: list[TupleValue], data: st.DataObject
) -> None:
    whole = encode(values)
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert parse_tuple(whole[:cut], 0, UNCHANGED_TOAST, BinaryDatum) is None
    with pytest.raises(DecodeError, match="truncated"):
        _tuple_in_python(whole[:cut], 0, "Insert")


def test_an_unknown_column_kind_is_none() -> None:
    data = struct.pack(">H", 2) + b"n" + b"x"
    assert parse_tuple(data, 0, UNCHANGED_TOAST, BinaryDatum) is None
    with pytest.raises(DecodeError, match="unknown column kind"):
        _tuple_in_python(data, 0, "Insert")
