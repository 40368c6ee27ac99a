"""Key ranges `(lower, upper]` of a table's primary key and their predicates in Postgres and
ClickHouse: pure SQL builders.

Ranges are compared in an order both engines share: numbers, dates and
timestamps natively; uuids by their text (ClickHouse orders UUIDs differently); text-like
keys by bytes (`COLLATE "C"` in Postgres). Keys of other types (float, bytea, arrays) have
no shared order: such a table is compared in Postgres only. Range bounds are the keys'
output texts; values are always bound as parameters (`%s` in Postgres, `{name:String}` in
ClickHouse).

A range whose fingerprints differ is split into pieces of `piece_rows` source rows, again
until a piece holds at most `LEAF_ROWS`; those are compared key by key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from psycopg import sql

from cdc.check.rowhash import Form, form_of
from cdc.load.chunks import TEXT_OID, VARCHAR_OID
from cdc.schema import Column, TableSchema
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.types import clickhouse_type, storage_column

Key = tuple[str, ...]  # the key columns' output texts, in key order
LEAF_ROWS: Final = 200  # ranges this small are compared key by key
FANOUT: Final = 8  # a differing range is split into about this many pieces
# Forms whose values both engines order the same way, compared natively.
_NATIVE_ORDER: Final = {Form.INTEGER, Form.NUMERIC, Form.BOOL, Form.DATE, Form.TIMESTAMP}


@dataclass(frozen=True)
class KeyRange:
    """Keys above `lower` (None: from the start) up to and including `upper` (None: to the
    end). `root` numbers the top-level range a sub-range was split from."""

    lower: Key | None
    upper: Key | None
    root: int = 0


def ranges_between(
    lower: Key | None, upper: Key | None, bounds: Sequence[Key], root: int = 0
) -> list[KeyRange]:
    """Split `(lower, upper]` at `bounds` (ascending keys inside it)."""
    edges = [lower, *bounds, upper]
    return [KeyRange(edges[i], edges[i + 1], root) for i in range(len(edges) - 1)]


def piece_rows(rows: int) -> int:
    """Source rows per piece when a differing range of `rows` source rows is split."""
    return max(LEAF_ROWS, -(-rows // FANOUT))


def _pg_order(column: Column) -> sql.Composable:
    """The column's sort expression in Postgres."""
    ref = sql.Identifier(column.name)
    if form_of(column) is not Form.TEXT:
        return ref
    if storage_column(column).type_oid in (TEXT_OID, VARCHAR_OID):
        return sql.SQL('{} COLLATE "C"').format(ref)
    return sql.SQL('concat({}) COLLATE "C"').format(ref)


def _pg_bound(column: Column, value: sql.Composable) -> sql.Composable:
    """`value` (a key output text) as a value of the column's sort expression."""
    if form_of(column) is Form.TEXT:
        return sql.SQL('{}::text COLLATE "C"').format(value)
    return sql.SQL("{}::{}").format(value, sql.SQL(column.pg_type))


def ch_order(column: Column, param: str) -> tuple[str, str] | None:
    """(sort expression, bound value) in ClickHouse, or None when no order is shared."""
    ref = quote_identifier(column.name)
    bound = f"{{{param}:String}}"
    form = form_of(column)
    if form is Form.TIMESTAMP:
        return ref, f"parseDateTime64BestEffort({bound}, 6, 'UTC')"
    if form in _NATIVE_ORDER:
        return ref, f"CAST({bound} AS {clickhouse_type(replace(column, nullable=False))})"
    if form is Form.UUID:
        return f"toString({ref})", bound
    if form is Form.TEXT:
        return ref, bound
    return None


def clickhouse_key_problem(table: TableSchema) -> str | None:
    """Why ClickHouse cannot be compared by key range, or None when it can."""
    for name in table.primary_key:
        column = table.column(name)
        if ch_order(column, "p") is None:
            return f"key column {name} ({column.pg_type}) has no order shared with ClickHouse"
    return None


def _row(items: Sequence[sql.Composable]) -> sql.Composable:
    joined = sql.SQL(", ").join(items)
    return joined if len(items) == 1 else sql.SQL("ROW({})").format(joined)


def pg_key_order(table: TableSchema) -> sql.Composable:
    """The key columns' sort expressions in Postgres, in key order (an ORDER BY list)."""
    return sql.SQL(", ").join(_pg_order(table.column(name)) for name in table.primary_key)


def pg_key_equals(table: TableSchema) -> sql.Composable:
    """The predicate `key = <key output texts>` in Postgres, the texts as parameters."""
    columns = [table.column(name) for name in table.primary_key]
    return sql.SQL("{} = {}").format(
        _row([_pg_order(c) for c in columns]),
        _row([_pg_bound(c, sql.Placeholder()) for c in columns]),
    )


def pg_range_filter(
    table: TableSchema, rng: KeyRange, inline: bool = False
) -> tuple[sql.Composable, list[str]]:
    """The predicate `key in (lower, upper]` and its parameters. `inline`: the values as
    quoted literals instead, no parameters (for a predicate handed on as SQL text)."""
    columns = [table.column(name) for name in table.primary_key]
    parts: list[sql.Composable] = []
    params: list[str] = []
    for op, bound in ((">", rng.lower), ("<=", rng.upper)):
        if bound is None:
            continue
        values = [
            _pg_bound(column, sql.Literal(value) if inline else sql.Placeholder())
            for column, value in zip(columns, bound, strict=True)
        ]
        parts.append(
            sql.SQL("{} {} {}").format(
                _row([_pg_order(c) for c in columns]), sql.SQL(op), _row(values)
            )
        )
        if not inline:
            params.extend(bound)
    return (sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")), params


def ch_range_filter(table: TableSchema, rng: KeyRange) -> tuple[str, dict[str, str]]:
    """The predicate `key in (lower, upper]` in ClickHouse and its parameters."""
    parts: list[str] = []
    params: dict[str, str] = {}
    for op, prefix, bound in ((">", "lo", rng.lower), ("<=", "hi", rng.upper)):
        if bound is None:
            continue
        exprs, values = [], []
        for i, (name, value) in enumerate(zip(table.primary_key, bound, strict=True)):
            order = ch_order(table.column(name), f"{prefix}{i}")
            if order is None:
                raise ValueError(f"key column {name!r} has no order shared with ClickHouse")
            exprs.append(order[0])
            values.append(order[1])
            params[f"{prefix}{i}"] = value
        if len(exprs) == 1:
            parts.append(f"{exprs[0]} {op} {values[0]}")
        else:
            parts.append(f"tuple({', '.join(exprs)}) {op} tuple({', '.join(values)})")
    return (" AND ".join(parts) if parts else "1"), params
