"""Postgres COPY text format: split rows into the text values Postgres' output functions made.

Pure. A row is one line of tab-separated fields; `\\N` is NULL; backslash escapes stand for
the characters COPY TO escapes (backslash, backspace, form feed, newline, carriage return,
tab, vertical tab). The values come out exactly as a replication stream would carry them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from cdc.errors import CdcError, ErrorKind

NULL = b"\\N"
_ESCAPES = {
    b"\\": b"\\",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
}
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)


def _replace(match: re.Match[bytes]) -> bytes:
    char = match.group(1)
    return _ESCAPES.get(char, char)


_NEEDS_ESCAPE = re.compile(rb"[\\\n\r\t]")


def escape(value: bytes) -> bytes:
    """A value as a COPY text field (backslash, newline, carriage return, tab escaped):
    also a ClickHouse TabSeparated field, which reads the same escapes."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return (
        value.replace(b"\\", b"\\\\")
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
        .replace(b"\t", b"\\t")
    )


def unescape(field: bytes) -> bytes:
    return _ESCAPE.sub(_replace, field) if b"\\" in field else field


def parse_row(line: bytes, columns: int) -> tuple[bytes | None, ...]:
    """One COPY text line (without its newline) as `columns` values."""
    fields = line.split(b"\t")
    if len(fields) != columns:
        raise CdcError(ErrorKind.DECODE, f"COPY row has {len(fields)} fields, expected {columns}")
    return tuple(None if f == NULL else unescape(f) for f in fields)


def split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Whole lines from a stream of COPY data chunks (which may split lines anywhere)."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
