"""The text of a table batch's rows, built once and written to both targets.

Pure. Postgres' COPY text format and ClickHouse's TabSeparated share their field syntax
(tab-separated, `\\N` for NULL, backslash escapes for backslash, tab, newline and carriage
return), and the stream carries every value as the text Postgres' output function made. So
one line per complete row — its columns, `_version`, `_is_deleted` as `0`/`1` (Postgres'
boolean input reads both) — serves the historic COPY and, for tables whose column types
ClickHouse reads from that text unchanged, the ClickHouse insert.

Rows with values the stream did not resend (unchanged TOAST, the non-key columns of a
tombstone) are set apart as `incomplete`: the historic sink fills them from its copy first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cdc.batch import Key, RowImage, TableBatch
from cdc.errors import CdcError, ErrorKind
from cdc.pgoutput import UNCHANGED_TOAST, TupleData

NULL = b"\\N"
FIELD_SEPARATOR = b"\t"
_SPECIAL = re.compile(rb"[\\\n\r]")  # with the tab: what COPY text must escape
_NEEDS_ESCAPE = re.compile(rb"[\\\n\r\t]")
_DELETED_FLAG = (b"0", b"1")


def escape(value: bytes) -> bytes:
    """A value as a COPY text / TabSeparated field (backslash, newline, CR, tab escaped)."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return (
        value.replace(b"\\", b"\\\\")
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
        .replace(b"\t", b"\\t")
    )


def fields(values: TupleData) -> bytes | None:
    """The tab-separated fields of one row; None if a value is UNCHANGED_TOAST.

    The common row has no NULL and nothing to escape: one join and two scans in C prove
    it (the join fails on a NULL; the tab count and the absence of backslash, newline and
    carriage return show that no value needs escaping)."""
    try:
        line = FIELD_SEPARATOR.join(values)  # type: ignore[arg-type]
    except TypeError:
        if UNCHANGED_TOAST in values:
            return None
    else:
        if line.count(FIELD_SEPARATOR) == len(values) - 1 and _SPECIAL.search(line) is None:
            return line
    parts = []
    for value in values:
        if value is None:
            parts.append(NULL)
        elif isinstance(value, bytes):
            parts.append(escape(value))
        else:
            raise CdcError(ErrorKind.DECODE, "binary tuple values are not supported")
    return FIELD_SEPARATOR.join(parts)


@dataclass
class RowText:
    """`lines[i]` is the line of `images[i]`, newline included."""

    lines: list[bytes] = field(default_factory=list)
    images: list[RowImage] = field(default_factory=list)
    incomplete: list[Key] = field(default_factory=list)

    def data(self) -> bytes:
        return b"".join(self.lines)

    def by_insertion(self) -> tuple[list[bytes], list[bytes], int | None]:
        """(lines of rows inserted at the source, the other lines, the lowest version among
        the inserted; None if there are none)."""
        inserted: list[bytes] = []
        others: list[bytes] = []
        lowest: int | None = None
        for line, image in zip(self.lines, self.images, strict=True):
            if image.inserted:
                inserted.append(line)
                if lowest is None or image.version < lowest:
                    lowest = image.version
            else:
                others.append(line)
        return inserted, others, lowest


def row_text(table: TableBatch) -> RowText:
    """The lines of `table`'s complete rows, and the keys of the others."""
    text = RowText()
    lines, images, incomplete = text.lines, text.images, text.incomplete
    deleted_flag = _DELETED_FLAG
    for key, image in table.rows.items():
        line = fields(image.values)
        if line is None:
            incomplete.append(key)
            continue
        lines.append(b"%s\t%d\t%s\n" % (line, image.version, deleted_flag[image.deleted]))
        images.append(image)
    return text


def shared_row_text(table: TableBatch) -> RowText:
    """`row_text(table)`, made once per table batch and kept on it for the next sink."""
    if table.text is None:
        table.text = row_text(table)
    return table.text
