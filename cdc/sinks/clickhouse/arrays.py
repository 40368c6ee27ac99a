"""Postgres array values as ClickHouse array literals.

`parse_array` reads Postgres' array output (`{1,NULL,"a b"}`, nested, with optional
`[lo:hi]=` bounds); `array_converter` turns it into the literal of the column's
`Array(Nullable(element))` (`[1,NULL,'a b']`), valid as-is in a TSV field. Each element
passes its type's check (`cdc.sinks.clickhouse.limits`); an array whose nesting differs
from the column's is refused. Postgres' lower bounds are not kept: ClickHouse arrays
always start at 1.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from cdc.load.copytext import escape
from cdc.schema import Column, TypeKind
from cdc.sinks.clickhouse.limits import Converter, Refused, value_check
from cdc.sinks.clickhouse.types import PgType, storage_column

_BARE_ELEMENTS: Final = frozenset(  # written unquoted inside array literals
    {
        PgType.INT2,
        PgType.INT4,
        PgType.INT8,
        PgType.OID,
        PgType.FLOAT4,
        PgType.FLOAT8,
        PgType.NUMERIC,
    }
)

ArrayItems: TypeAlias = list["bytes | ArrayItems | None"]


def _quote(value: bytes) -> bytes:
    """A ClickHouse string literal inside an array, valid as-is in a TSV field."""
    return b"'" + escape(value).replace(b"'", b"\\'") + b"'"


def _bool_literal(value: bytes) -> bytes:
    return {b"t": b"true", b"f": b"false"}[value]


def parse_array(text: bytes, delimiter: bytes = b",") -> ArrayItems:
    """Postgres array output (`{1,NULL,"a b"}`, nested, optional `[lo:hi]=` bounds)."""
    if text[:1] == b"[":
        text = text[text.index(b"=") + 1 :]
    items, end = _parse_level(text, 0, delimiter[0])
    if end != len(text):
        raise Refused("is not a Postgres array text")
    return items


def _parse_level(text: bytes, pos: int, delimiter: int) -> tuple[ArrayItems, int]:
    if text[pos : pos + 1] != b"{":
        raise Refused("is not a Postgres array text")
    pos += 1
    items: ArrayItems = []
    if text[pos : pos + 1] == b"}":
        return items, pos + 1
    while True:
        first = text[pos : pos + 1]
        item: bytes | ArrayItems | None
        if first == b"{":
            item, pos = _parse_level(text, pos, delimiter)
        elif first == b'"':
            parts = []
            pos += 1
            while True:
                close = text.find(b'"', pos)
                backslash = text.find(b"\\", pos, close)
                if close < 0:
                    raise Refused("has an unterminated quoted array element")
                if backslash < 0:
                    parts.append(text[pos:close])
                    pos = close + 1
                    break
                parts.append(text[pos:backslash])
                parts.append(text[backslash + 1 : backslash + 2])
                pos = backslash + 2
            item = b"".join(parts)
        else:
            end = pos
            while end < len(text) and text[end] != delimiter and text[end] != ord("}"):
                end += 1
            item = text[pos:end]
            if item.upper() == b"NULL":
                item = None
            pos = end
        items.append(item)
        separator = text[pos : pos + 1]
        pos += 1
        if separator == b"}":
            return items, pos
        if not separator or separator[0] != delimiter:
            raise Refused("is not a Postgres array text")


def _depth(column: Column) -> tuple[int, Column]:
    """(dimensions, element column) of an array column."""
    dimensions = 0
    while column.kind is TypeKind.ARRAY and column.element is not None:
        dimensions += 1
        column = storage_column(column.element)
    return dimensions, column


def array_converter(column: Column) -> Converter:
    """The converter of an array column's values (`column` resolved to its storage)."""
    dimensions, element = _depth(column)
    check = value_check(element)
    delimiter = b";" if element.type_oid == PgType.BOX else b","
    literal: Converter
    if element.kind is TypeKind.BASE and element.type_oid == PgType.BOOL:
        literal = _bool_literal
    elif element.kind is TypeKind.BASE and element.type_oid in _BARE_ELEMENTS:
        literal = check or bytes
    elif check is None:
        literal = _quote
    else:
        literal = lambda value: _quote(check(value))  # noqa: E731

    def render(items: ArrayItems, level: int) -> bytes:
        parts = []
        for item in items:
            if isinstance(item, list):
                if level == dimensions:
                    raise Refused(f"has more dimensions than the column's {dimensions}")
                parts.append(render(item, level + 1))
            elif level != dimensions:
                raise Refused(f"has fewer dimensions than the column's {dimensions}")
            else:
                parts.append(b"NULL" if item is None else literal(item))
        return b"[" + b",".join(parts) + b"]"

    def convert(value: bytes) -> bytes:
        return render(parse_array(value, delimiter), 1)

    return convert
