"""The batch model: the last image of every row of a set of transactions, per table.

Pure data. Each row image is versioned `(commit_lsn << 64) | ordinal` (`cdc.versions`);
a tombstone carries the key (and the values the targets complete it with); a TRUNCATE
is the table's truncate version. Rows are laid out as their table batch's `TableSchema`:
the table's latest columns, plus those a schema change inside the batch removed
(nullable; values are matched by column name, so nothing is lost). Wire types stop at
the fold (`cdc.apply.batcher`): a batch names its tables by `TableSchema`, never by a
pgoutput `Relation`. The rules that fold one change into a table batch are in
`cdc.apply.rowimages`.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

from cdc.apply.changes import Op
from cdc.errors import CdcError, ErrorKind, rebuild_steps
from cdc.protocol import TupleData, TupleValue, pg_timestamp_to_datetime
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.sinks import retype

if TYPE_CHECKING:
    from cdc.apply.rowtext import RowText

TableName = tuple[str, str]
Key = tuple[TupleValue, ...]


class RowImage(NamedTuple):
    version: int
    deleted: bool
    values: TupleData  # in the table batch's column layout; UNCHANGED_TOAST = keep target's
    # Inserted at the source and first seen in this batch: the key is new to the targets
    # unless a replay or a backfill wrote it already (a hint for a faster write, never
    # trusted for correctness).
    inserted: bool = False


class FillSource(NamedTuple):
    """A historic row that holds a row's unchanged values if its `_version` is in
    `[lowest, bound)`: the state of `key` between two changes of this batch. (A replay
    finds historic rows that a first run already moved on; a version in the range
    proves the row is still the one the change read.)"""

    key: Key
    lowest: int
    bound: int


NO_BOUND = 1 << 128  # above every version


@dataclass
class TableBatch:
    schema: TableSchema  # the rows' layout
    rows: dict[Key, RowImage] = field(default_factory=dict)
    truncate_version: int | None = None
    text: RowText | None = None  # the rows' text, made once for every sink (`cdc.apply.rowtext`)
    # For a row whose unchanged values were another key's (its primary key changed in this
    # batch): the historic rows that hold them, in order (`FillSource`). Meaningful only
    # while `rows[key]` still holds UNCHANGED_TOAST; every other such row fills from its own
    # key's historic row, whatever its version.
    fill_from: dict[Key, tuple[FillSource, ...]] = field(default_factory=dict)
    op_counts: dict[Op, int] = field(default_factory=dict)  # changes folded in, per kind
    # The batch's commit times as text (`commit_time_text`), by commit LSN: a row's is
    # `commit_times[version >> 64]`. Shared by every table of the batch.
    commit_times: dict[int, bytes] = field(default_factory=dict)
    # The commit LSN of the first change folded in (`cdc.apply.copybounds`).
    first_commit: int = 0
    # The schema's column names and key positions, kept for the fold's inner loop.
    columns: tuple[str, ...] = field(init=False)
    key_positions: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.relayout(self.schema)

    def relayout(self, schema: TableSchema) -> None:
        """Lay the table out as `schema` (the caller relays its rows out)."""
        self.schema = schema
        self.columns = schema.column_names
        self.key_positions = schema.key_indexes

    @property
    def name(self) -> TableName:
        return (self.schema.schema, self.schema.name)


@dataclass
class Batch:
    tables: dict[TableName, TableBatch] = field(default_factory=dict)
    transactions: int = 0
    changes: int = 0
    skipped: int = 0
    end_lsn: Lsn = Lsn.ZERO
    commit_times: list[int] = field(default_factory=list)  # Postgres-epoch microseconds
    commit_time_text: dict[int, bytes] = field(default_factory=dict)  # by commit LSN

    @property
    def ops(self) -> Counter[tuple[TableName, Op]]:
        """Changes folded in, per table and kind."""
        return Counter(
            {(name, op): n for name, t in self.tables.items() for op, n in t.op_counts.items()}
        )


def widen(layout: TableSchema, latest: TableSchema) -> TableSchema:
    """`layout` followed by `latest` (a schema change inside a batch): the columns of
    `layout` in their place, then those `latest` added. A column is nullable if it was in
    either (rows from before the change hold NULL in a column added since, and may in one
    made NOT NULL since), or if `latest` no longer has it. A column whose type widened
    takes the new type (the texts of older rows are values of it, `cdc.sinks.retype`), one
    narrowed keeps the old; another type change, or a new primary key, cannot follow: the
    table is set aside."""
    if latest.primary_key != layout.primary_key:
        raise CdcError(
            ErrorKind.TABLE_CHANGED,
            f"{latest.qualified_name} changed its key ({', '.join(layout.primary_key)}) -> "
            f"({', '.join(latest.primary_key)}): its target tables are keyed by the old "
            f"one. {rebuild_steps()}",
            table=(latest.schema, latest.name),
        )
    now = {c.name: c for c in latest.columns}
    columns = []
    for column in layout.columns:
        newer = now.pop(column.name, None)
        if newer is None:
            columns.append(column if column.nullable else replace(column, nullable=True))
            continue
        old_type, new_type = retype.type_ref(column), retype.type_ref(newer)
        if not retype.widens(old_type, new_type):
            if not retype.widens(new_type, old_type):
                raise retype.refused(latest, column.name, newer.pg_type)
            newer = replace(column, nullable=newer.nullable)  # narrowed: the old holds both
        columns.append(replace(newer, nullable=True) if column.nullable else newer)
    columns += (c if c.nullable else replace(c, nullable=True) for c in now.values())
    return replace(latest, columns=tuple(columns))


def commit_time_text(commit_ts: int) -> bytes:
    """A commit timestamp (Postgres-epoch microseconds) as the text both targets read:
    UTC, with its offset, to the microsecond. (One per transaction: the second's text is
    made once for all the transactions committed in it.)"""
    seconds, micros = divmod(commit_ts, 1_000_000)
    return b"%s.%06d+00" % (_second_text(seconds), micros)


@functools.lru_cache(maxsize=16)
def _second_text(seconds: int) -> bytes:
    return pg_timestamp_to_datetime(seconds * 1_000_000).strftime("%Y-%m-%d %H:%M:%S").encode()
