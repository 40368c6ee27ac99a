"""Reading the parts of a pgoutput message: fixed-size fields, NUL-terminated strings and
TupleData, each bounds-checked so that short or bad input raises `DecodeError` naming what
was being read (`what`), never a bare `IndexError` or `struct.error`.
"""

from __future__ import annotations

import struct
from struct import Struct
from typing import Final

from cdc.errors import DecodeError
from cdc.protocol.messages import UNCHANGED_TOAST, BinaryDatum, TupleData, TupleValue
from cdc.protocol.tags import ColumnKind, describe_byte

COLUMN_LENGTH: Final = Struct(">I")  # length of a 't' or 'b' column value

_NULL: Final = ord(ColumnKind.NULL)
_TOAST: Final = ord(ColumnKind.UNCHANGED_TOAST)
_TEXT: Final = ord(ColumnKind.TEXT)
_BINARY: Final = ord(ColumnKind.BINARY)


def unpack(layout: Struct, data: bytes, pos: int, what: str) -> tuple[int, ...]:
    """The fixed-size fields of `layout` at `pos`."""
    if len(data) - pos < layout.size:
        raise DecodeError(
            f"{what}: truncated, need {layout.size} bytes at offset {pos}, have {len(data) - pos}"
        )
    return layout.unpack_from(data, pos)


def read_string(data: bytes, pos: int, what: str) -> tuple[str, int]:
    """A NUL-terminated UTF-8 string at `pos`; returns it and the offset after the NUL."""
    end = data.find(0, pos)
    if end < 0:
        raise DecodeError(f"{what}: string not NUL-terminated")
    try:
        return data[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: invalid UTF-8 at offset {pos + exc.start}") from exc


def expect_end(data: bytes, pos: int, what: str) -> None:
    """The message ends at `pos`: it must consume exactly its bytes."""
    if pos != len(data):
        raise DecodeError(f"{what}: {len(data) - pos} unexpected trailing bytes at offset {pos}")


def read_tuple(data: bytes, pos: int, what: str) -> tuple[TupleData, int]:
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
