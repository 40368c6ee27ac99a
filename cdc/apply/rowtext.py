"""The text of a table batch's rows, built once and written to both targets.

Pure. Postgres' COPY text format and ClickHouse's TabSeparated share their field syntax
(tab-separated, `\\N` for NULL, backslash escapes for backslash, tab, newline and carriage
return), and the stream carries every value as the text Postgres' output function made. So
one line per complete row — its columns, `_version`, `_is_deleted` as `0`/`1` (Postgres'
boolean input reads both), `_commit_time` (UTC with its offset: both read it) — serves the
historic COPY and, for tables whose column types ClickHouse reads from that text
unchanged, the ClickHouse insert.

Rows with values the stream did not resend (unchanged TOAST, the non-key columns of a
tombstone) are set apart as `incomplete`: the historic sink fills them from its copy first.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from cdc.apply.batch import Key, RowImage, TableBatch
from cdc.errors import CdcError, ErrorKind
from cdc.load.copytext import NULL, escape
from cdc.protocol import UNCHANGED_TOAST, TupleData
from cdc.versions import SHIFT

FIELD_SEPARATOR = b"\t"
_DELETED_FLAG = (b"0", b"1")

Rows = Collection[tuple[Key, RowImage]]
NativeLines = Callable[..., tuple[list[bytes], list[RowImage], list[Key]] | None]
_row_lines: NativeLines | None
try:  # built by `pip install` where a C compiler is available; optional
    from cdc.apply._rowtext import row_lines as _row_lines
except ImportError:  # pragma: no cover - depends on the build
    _row_lines = None


def escaped_fields(values: TupleData) -> bytes:
    """The tab-separated fields of a row without UNCHANGED_TOAST, each value escaped and
    NULL as `\\N`."""
    parts = []
    for value in values:
        if value is None:
            parts.append(NULL)
        elif isinstance(value, bytes):
            parts.append(escape(value))
        else:
            raise CdcError(ErrorKind.DECODE, "binary tuple values are not supported")
    return FIELD_SEPARATOR.join(parts)


def _plain(joined: Sequence[bytes], width: int) -> bool:
    """True if no value in these rows (each its `width` values joined by tabs) needs
    escaping: checked over all of them at once, which costs a fraction of a per-row scan."""
    if not joined:
        return True
    blob = b"\n".join(joined)
    return (
        blob.count(FIELD_SEPARATOR) == len(joined) * (width - 1)
        and blob.count(b"\n") == len(joined) - 1
        and b"\\" not in blob
        and b"\r" not in blob
    )


@dataclass
class RowText:
    """`lines[i]` is the line of `images[i]`, newline included."""

    lines: list[bytes] = field(default_factory=list)
    images: list[RowImage] = field(default_factory=list)
    incomplete: list[Key] = field(default_factory=list)


def row_text(table: TableBatch) -> RowText:
    """The lines of `table`'s complete rows, and the keys of the others."""
    return _text_of(table, table.rows.items())


def add_completed(table: TableBatch, text: RowText, images: Sequence[RowImage]) -> None:
    """Give `text` the lines of its incomplete rows, now completed as `images`."""
    completed = _text_of(table, [((), image) for image in images])
    if completed.incomplete:
        raise ValueError(f"{table.schema.qualified_name}: a completed row lacks values")
    text.lines.extend(completed.lines)
    text.images.extend(completed.images)
    text.incomplete = []


def _text_of(table: TableBatch, rows: Rows, native: bool = True) -> RowText:
    """The lines of the complete rows among `rows`, and the keys of the others: made in
    C (`cdc.apply._rowtext`) when it is built, else (and for values of other kinds, which
    it leaves here) in Python, the reference.

    In Python, rows without a NULL are joined as they are (the join fails on a NULL or a
    marker), and checked together for anything to escape; the rare others go value by
    value."""
    if native and _row_lines is not None:
        made = _row_lines(rows, table.commit_times, SHIFT, UNCHANGED_TOAST)
        if made is not None:
            return RowText(*made)
    text = RowText()
    incomplete = text.incomplete
    joined: list[bytes] = []
    plain_images: list[RowImage] = []
    other_lines: list[bytes] = []
    other_images: list[RowImage] = []
    join = FIELD_SEPARATOR.join
    for key, image in rows:
        values = image.values
        try:
            joined.append(join(values))  # type: ignore[arg-type]
        except TypeError:
            if UNCHANGED_TOAST in values:
                incomplete.append(key)
            else:
                other_lines.append(escaped_fields(values))
                other_images.append(image)
            continue
        plain_images.append(image)
    if not _plain(joined, len(table.columns)):
        joined = [escaped_fields(image.values) for image in plain_images]
    flags = _DELETED_FLAG
    times = table.commit_times
    text.lines = [
        b"%s\t%d\t%s\t%s\n"
        % (line, image.version, flags[image.deleted], times.get(image.version >> SHIFT, NULL))
        for line, image in zip((*joined, *other_lines), (*plain_images, *other_images), strict=True)
    ]
    text.images = [*plain_images, *other_images]
    return text


def shared_row_text(table: TableBatch) -> RowText:
    """`row_text(table)`, made once per table batch and kept on it for the next sink."""
    if table.text is None:
        table.text = row_text(table)
    return table.text
