"""Decoding row changes (Insert, Update, Delete), the decoder's hot path: in C when the
optional `cdc.protocol._speedups` was built (`row_parser`), else, and for any message the
C parser refuses (to say what is wrong with it), in Python here. Inside a stream block a
row change carries a leading xid, so each function is told whether it is in one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from struct import Struct
from typing import Final

from cdc.errors import DecodeError
from cdc.protocol.fields import expect_end, read_tuple
from cdc.protocol.messages import UNCHANGED_TOAST, BinaryDatum, Delete, Insert, OldTupleKind, Update
from cdc.protocol.tags import TupleMarker, describe_byte

ROW_HEAD: Final = Struct(">IB")  # after the tag: relation oid, tuple marker
STREAM_ROW_HEAD: Final = Struct(">IIB")  # the same inside a stream block, after the xid

_NEW: Final = ord(TupleMarker.NEW)
_OLD_KINDS: Final[dict[int, OldTupleKind]] = {
    ord(TupleMarker.KEY): TupleMarker.KEY,
    ord(TupleMarker.OLD): TupleMarker.OLD,
}

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


def row_parser() -> RowParser | None:
    """The C row-change parser in use; None if it was not built."""
    return _parse_row


def _row_head(data: bytes, streaming: bool) -> tuple[int | None, int, int, int]:
    """(xid, relation oid, tuple marker, offset after the marker) of a row change."""
    if streaming:
        xid, oid, marker = STREAM_ROW_HEAD.unpack_from(data, 1)
        return xid, oid, marker, 1 + STREAM_ROW_HEAD.size
    oid, marker = ROW_HEAD.unpack_from(data, 1)
    return None, oid, marker, 1 + ROW_HEAD.size


def insert(data: bytes, streaming: bool) -> Insert:
    xid, oid, marker, pos = _row_head(data, streaming)
    if marker != _NEW:
        raise DecodeError(f"Insert: expected new tuple 'N', got {describe_byte(marker)}")
    new, pos = read_tuple(data, pos, "Insert")
    if pos != len(data):
        expect_end(data, pos, "Insert")
    return Insert(xid, oid, new)


def update(data: bytes, streaming: bool) -> Update:
    xid, oid, marker, pos = _row_head(data, streaming)
    old_kind = _OLD_KINDS.get(marker)
    old = None
    if old_kind is not None:
        old, pos = read_tuple(data, pos, "Update old")
        if pos >= len(data):
            raise DecodeError("Update: truncated before new tuple marker")
        marker = data[pos]
        pos += 1
    if marker != _NEW:
        raise DecodeError(f"Update: expected tuple marker 'N', got {describe_byte(marker)}")
    new, pos = read_tuple(data, pos, "Update new")
    if pos != len(data):
        expect_end(data, pos, "Update")
    return Update(xid, oid, old_kind, old, new)


def delete(data: bytes, streaming: bool) -> Delete:
    xid, oid, marker, pos = _row_head(data, streaming)
    old_kind = _OLD_KINDS.get(marker)
    if old_kind is None:
        raise DecodeError(f"Delete: expected tuple marker 'K' or 'O', got {describe_byte(marker)}")
    old, pos = read_tuple(data, pos, "Delete")
    if pos != len(data):
        expect_end(data, pos, "Delete")
    return Delete(xid, oid, old_kind, old)
