"""Fold committed transactions into one batch: the last image of every row, per table.

Pure: no I/O. Each change becomes a row image versioned `(commit_lsn << 64) | ordinal`;
later changes of the same key replace earlier ones (their unchanged TOAST values are
taken from the image they replace); deletes become tombstones carrying only the key; a
primary-key change is a tombstone for the old key plus an image for the new one; a
TRUNCATE drops the table's earlier images and records its version. A table without key
positions is an append-only log: every insert is a row of its own, keyed by its version.
Rows are laid out as the table batch's `TableSchema`: the table's latest columns,
plus columns that a schema change inside the batch removed (nullable; values are matched
by column name, so nothing is lost). Wire types stop here: a batch names its tables by
`TableSchema`, never by a pgoutput `Relation`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

from cdc.apply.changes import Change, Op, RecordChunk, Transaction
from cdc.errors import CdcError, ErrorKind
from cdc.protocol import (
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Relation,
    TupleData,
    TupleValue,
    Update,
    pg_timestamp_to_datetime,
)
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.versions import version_of

NativeFold = Callable[..., int]
_fold: NativeFold | None
try:  # built by `pip install` where a C compiler is available; optional
    from cdc.apply._fold import fold as _fold
except ImportError:  # pragma: no cover - depends on the build
    _fold = None

if TYPE_CHECKING:
    from cdc.apply.rowtext import RowText

TableName = tuple[str, str]
Key = tuple[TupleValue, ...]
# The table a relation describes (its key positions: `key_indexes`; none for an
# append-only log, whose rows are keyed by version); None when the table cannot be
# replicated (it is quarantined: its changes are skipped while the other tables flow).
SchemaResolver = Callable[[Relation], TableSchema | None]
KeyGetter = Callable[[TupleData], Key]
# Per Relation object: (relation, its table batch or None if quarantined, remap, key getter)
Route = tuple[Relation, "TableBatch | None", "tuple[int, ...] | None", KeyGetter]


class RowImage(NamedTuple):
    version: int
    deleted: bool
    values: TupleData  # in the table batch's column layout; UNCHANGED_TOAST = keep target's
    # Inserted at the source and first seen in this batch: the key is new to the targets
    # unless a replay or a backfill wrote it already (a hint for a faster write, never
    # trusted for correctness).
    inserted: bool = False


# `RowImage((version, deleted, values, inserted))` without the Python-level `__new__` of a
# NamedTuple: one is built per change. Always all four fields.
_image = functools.partial(tuple.__new__, RowImage)


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
    # The schema's column names and key positions, kept for the fold's inner loop.
    columns: tuple[str, ...] = field(init=False)
    key_positions: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.columns = self.schema.column_names
        self.key_positions = self.schema.key_indexes

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


class BatchBuilder:
    """Accumulate transactions with `add`; `build` returns the batch and starts a new one."""

    def __init__(
        self, resolve: SchemaResolver, max_changes: int | None = None, native: bool = True
    ) -> None:
        """`max_changes`: a transaction larger than this is cut into several batches (its
        end is acknowledged only with the batch that completes it), so memory stays bounded
        by the batch size, not by the largest transaction. `native`: fold in C when
        `cdc.apply._fold` is built (False: always in Python, the reference)."""
        self._native_fold = _fold if native else None
        self._resolve = resolve
        self._max_changes = max_changes
        self._last_end = Lsn.ZERO
        self._batch = Batch()
        self._relations: dict[TableName, Relation] = {}  # the latest of each table's
        self._remaps: dict[tuple[int, int], tuple[int, ...] | None] = {}
        self._routes: dict[int, Route] = {}

    @property
    def changes(self) -> int:
        return self._batch.changes

    @property
    def transactions(self) -> int:
        return self._batch.transactions

    def build(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        self._relations.clear()
        self._remaps.clear()
        self._routes.clear()
        return batch

    def add(self, txn: Transaction, emit: Callable[[Batch], None] | None = None) -> list[Batch]:
        """Fold `txn` in. Batches that fill up on the way (usually none) go to `emit` as soon
        as they are full, so a huge transaction never holds more than one batch here; without
        `emit` they are returned."""
        full: list[Batch] = []
        hand_over = emit if emit is not None else full.append
        limit = self._max_changes
        batch = self._batch
        batch.end_lsn = self._last_end
        commit_high = version_of(txn.commit_lsn, 0)  # `| ordinal` gives each version
        commit_time = commit_time_text(txn.commit_ts)
        batch.commit_time_text[txn.commit_lsn] = commit_time
        # Changes this batch can still take (-1: any number).
        room = max(limit - batch.changes, 1) if limit is not None else -1
        native = self._native_fold
        for chunk in txn.chunks():
            i, end = 0, len(chunk.records)
            while i < end:
                if room == 0:
                    hand_over(self.build())  # ends mid-transaction: acknowledges less
                    batch = self._batch
                    batch.end_lsn = self._last_end
                    batch.commit_time_text[txn.commit_lsn] = commit_time
                    room = limit if limit is not None else -1
                stop = end if room < 0 else min(end, i + room)
                if native is not None:
                    done = self._fold_natively(native, chunk, i, stop, commit_high)
                    if done == i:  # a change the C loop leaves to Python
                        done = i + 1
                        self._fold(chunk.changes(i, done), commit_high)
                else:
                    done = stop
                    self._fold(chunk.changes(i, stop), commit_high)
                batch.changes += done - i
                if room > 0:
                    room -= done - i
                i = done
        batch.transactions += 1
        batch.end_lsn = self._last_end = txn.end_lsn
        batch.commit_times.append(txn.commit_ts)
        return full

    def _fold_natively(
        self, fold: NativeFold, chunk: RecordChunk, start: int, stop: int, commit_high: int
    ) -> int:
        """Fold what the C loop takes of `chunk.records[start:stop]`; returns where it
        stopped."""
        # Only tables this batch has routed already: the first change of a relation goes
        # through Python (routing it may widen its table's layout).
        tables: list[TableBatch | None] = []
        routes: list[tuple[dict[Key, RowImage], tuple[int, ...], int] | None] = []
        for relation in chunk.relations:
            route = self._routes.get(id(relation))
            table = None
            if route is not None and route[0] is relation and route[2] is None:
                table = route[1]
            if table is not None and not table.key_positions:
                table = None  # an append-only log: folded in Python
            tables.append(table)
            routes.append(
                None if table is None else (table.rows, table.key_positions, len(table.columns))
            )
        counts = [0] * (3 * len(routes))
        done = fold(
            chunk.records, start, stop, routes, chunk.first_ordinal, commit_high, counts,
            Insert, Update, Delete, RowImage, UNCHANGED_TOAST,
        )  # fmt: skip
        for table, inserts, updates, deletes in zip(
            tables, counts[0::3], counts[1::3], counts[2::3], strict=True
        ):
            if table is not None and (inserts or updates or deletes):
                op_counts = table.op_counts
                for op, n in ((Op.INSERT, inserts), (Op.UPDATE, updates), (Op.DELETE, deletes)):
                    if n:
                        op_counts[op] = op_counts.get(op, 0) + n
        return done

    def _fold(self, changes: list[Change], commit_high: int) -> None:
        """Fold `changes` (counted in the batch by the caller) into their tables' rows."""
        batch = self._batch
        routes = self._routes
        insert, update, truncate, delete = Op.INSERT, Op.UPDATE, Op.TRUNCATE, Op.DELETE
        for op, relation, ordinal, new, old in changes:
            route = routes.get(id(relation))
            if route is None or route[0] is not relation:
                route = self._route(relation)
            _, table, remap, key_of = route
            if table is None:
                batch.skipped += 1
                continue
            counts = table.op_counts
            counts[op] = counts.get(op, 0) + 1
            version = commit_high | ordinal
            rows = table.rows
            if not table.key_positions:
                self._append(table, op, version, new, remap)
                continue
            if remap is None:
                if op is insert:
                    key = key_of(new)  # type: ignore[arg-type]
                    if key not in rows:
                        rows[key] = _image((version, False, new, True))
                        continue
                    if UNCHANGED_TOAST not in new:  # type: ignore[operator]
                        rows[key] = _image((version, False, new, False))
                        continue
                elif op is update and old is None:
                    self._upsert(table, key_of, new, version)  # type: ignore[arg-type]
                    continue
            if op is truncate:
                rows.clear()
                table.fill_from.clear()
                table.truncate_version = version
                continue
            if op is delete:
                assert old is not None
                self._tombstone(table, key_of, _relayout(old, remap), version)
                continue
            assert new is not None
            self._update(table, key_of, _relayout(new, remap), old, remap, version)

    def _update(
        self,
        table: TableBatch,
        key_of: KeyGetter,
        new: TupleData,
        old: TupleData | None,
        remap: tuple[int, ...] | None,
        version: int,
    ) -> None:
        """An update (or an insert over a row of the batch), `new` laid out as the table."""
        if old is None:
            self._upsert(table, key_of, new, version)
            return
        old = _relayout(old, remap)
        if UNCHANGED_TOAST in new:
            # REPLICA IDENTITY FULL: the old row holds the unchanged values. (An old key
            # has every column too, the others NULL; a TOASTed value is never NULL.)
            new = tuple(
                o if n is UNCHANGED_TOAST and o is not None else n
                for n, o in zip(new, old, strict=True)
            )
        old_key = key_of(old)
        if old_key == key_of(new):
            self._upsert(table, key_of, new, version)
            return
        # The key changed: unchanged values come from the old key's image, taken before
        # its tombstone replaces it; the new key has no row of its own yet.
        self._upsert(table, key_of, new, version, source=old_key)
        self._tombstone(table, key_of, old, version)

    def _append(
        self,
        table: TableBatch,
        op: Op,
        version: int,
        new: TupleData | None,
        remap: tuple[int, ...] | None,
    ) -> None:
        """A change of an append-only log: an insert is a row keyed by its version (so a
        replay writes the same rows again); its publication sends no updates or deletes."""
        if op is Op.INSERT:
            assert new is not None
            key = (b"%d" % version,)
            table.rows[key] = _image((version, False, _relayout(new, remap), True))
        elif op is Op.TRUNCATE:
            table.rows.clear()
            table.truncate_version = version
        else:
            self._batch.skipped += 1

    def _route(self, relation: Relation) -> Route:
        """Where changes of `relation` go in this batch (cached per Relation object)."""
        table = self._table(relation)
        if table is None:
            route: Route = (relation, None, None, _no_key)
        else:
            route = (relation, table, self._remap(table, relation), _key_getter(table))
        self._routes[id(relation)] = route
        return route

    def _table(self, relation: Relation) -> TableBatch | None:
        name = (relation.namespace, relation.name)
        table = self._batch.tables.get(name)
        if table is None:
            schema = self._resolve(relation)
            if schema is None:
                return None
            table = TableBatch(schema)
            table.commit_times = self._batch.commit_time_text
            self._batch.tables[name] = table
            self._relations[name] = relation
        elif self._relations[name] is not relation:
            schema = self._resolve(relation)
            if schema is None:  # set aside by this change: so are its rows of this batch
                del self._batch.tables[name]
                self._routes.clear()
                return None
            self._adopt(table, relation, schema)
        return table

    def _adopt(self, table: TableBatch, relation: Relation, schema: TableSchema) -> None:
        """A new Relation for a table already in the batch: widen the layout by name."""
        widened = widen(table.schema, schema)
        added = len(widened.columns) - len(table.columns)
        if added:
            pad = (None,) * added
            table.rows = {
                key: image._replace(values=image.values + pad) for key, image in table.rows.items()
            }
        key_positions = table.key_positions
        table.schema = widened
        table.columns = widened.column_names
        table.key_positions = key_positions  # the rows are keyed as they were
        self._relations[table.name] = relation
        self._routes.clear()  # their remaps and rows may be out of date
        self._remaps.clear()

    def _remap(self, table: TableBatch, relation: Relation) -> tuple[int, ...] | None:
        """Positions of the table layout's columns in `relation`'s tuple (None: same)."""
        cache_key = (id(table), id(relation))
        if cache_key in self._remaps:
            return self._remaps[cache_key]
        names = tuple(c.name for c in relation.columns)
        remap = (
            None
            if names == table.columns
            else tuple(names.index(c) if c in names else -1 for c in table.columns)
        )
        self._remaps[cache_key] = remap
        return remap

    @staticmethod
    def _tombstone(table: TableBatch, key_of: KeyGetter, old: TupleData, version: int) -> None:
        """A deleted row keeps its last known values: from this batch, else the target's."""
        key = key_of(old)
        previous = table.rows.get(key)
        if previous is not None and not previous.deleted:
            # Its values, and where any it lacks come from, stay as they were.
            table.rows[key] = _image((version, True, previous.values, False))
            return
        values: list[TupleValue] = [UNCHANGED_TOAST] * len(table.columns)
        for i in table.key_positions:
            values[i] = old[i]
        table.rows[key] = _image((version, True, tuple(values), False))
        table.fill_from.pop(key, None)

    @staticmethod
    def _upsert(
        table: TableBatch,
        key_of: KeyGetter,
        new: TupleData,
        version: int,
        source: Key | None = None,
    ) -> None:
        """Store `new`, its unchanged values taken from the latest image of `source` (the
        row's key before this change; default: its own key): the image in this batch if
        the row is live in it, else the historic rows noted in `fill_from`."""
        key = key_of(new)
        rows = table.rows
        fill_from = table.fill_from
        if UNCHANGED_TOAST not in new:
            fill_from.pop(key, None)
            rows[key] = _image((version, False, new, False))
            return
        if source is None:
            source = key
        previous = rows.get(source)
        live = previous is not None and not previous.deleted
        if live:
            new = _filled(new, previous.values)  # type: ignore[union-attr]
        if UNCHANGED_TOAST not in new or (source == key and not live):
            fill_from.pop(key, None)  # complete, or its own historic row holds the rest
        elif source != key:
            # The values are `source`'s as they were before this change: its historic row
            # if no later change moved it on (or the rows that held them before it).
            own = (FillSource(source, 0, NO_BOUND),)
            first, *earlier = fill_from.get(source, own) if live else own
            fill_from[key] = (
                FillSource(key, version, NO_BOUND),  # a replay that applied this change
                FillSource(first.key, first.lowest, version + 1),
                *earlier,
            )
        # (else: an update of a row whose values come from where its image's came from)
        rows[key] = _image((version, False, new, False))


def widen(layout: TableSchema, latest: TableSchema) -> TableSchema:
    """`layout` followed by `latest` (a schema change inside a batch): the columns of
    `layout` in their place, then those `latest` added; each as `latest` describes it, or
    nullable if `latest` no longer has it. A column whose type changed cannot follow."""
    now = {c.name: c for c in latest.columns}
    columns = []
    for column in layout.columns:
        newer = now.pop(column.name, None)
        if newer is None:
            columns.append(column if column.nullable else replace(column, nullable=True))
            continue
        if newer.type_oid != column.type_oid:
            raise CdcError(
                ErrorKind.SCHEMA,
                f"column {column.name!r} of {latest.qualified_name} changed type "
                f"(oid {column.type_oid} -> {newer.type_oid}) inside one batch; see "
                "`cdc run --help` on incompatible type changes",
            )
        columns.append(newer)
    columns += now.values()
    return replace(latest, columns=tuple(columns))


def commit_time_text(commit_ts: int) -> bytes:
    """A commit timestamp (Postgres-epoch microseconds) as the text both targets read:
    UTC, with its offset, to the microsecond."""
    return pg_timestamp_to_datetime(commit_ts).strftime("%Y-%m-%d %H:%M:%S.%f+00").encode()


def native_fold() -> NativeFold | None:
    """The C fold in use; None if it was not built."""
    return _fold


def _no_key(values: TupleData) -> Key:
    raise AssertionError("a quarantined table has no key")


def _key_getter(table: TableBatch) -> KeyGetter:
    """The key tuple of a row in `table`'s layout (itemgetter: no Python loop per row)."""
    positions = table.key_positions
    if not positions:
        return _no_key  # an append-only log: its rows are keyed by version
    if len(positions) == 1:
        (only,) = positions
        return lambda values: (values[only],)
    getter = itemgetter(*positions)
    return lambda values: getter(values)


def _filled(new: TupleData, earlier: TupleData) -> TupleData:
    """`new` with its UNCHANGED_TOAST values taken from `earlier` (same layout)."""
    return tuple(e if n is UNCHANGED_TOAST else n for n, e in zip(new, earlier, strict=True))


def _relayout(values: TupleData, remap: tuple[int, ...] | None) -> TupleData:
    if remap is None:
        return values
    return tuple(values[i] if i >= 0 else None for i in remap)
