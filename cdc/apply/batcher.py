"""Fold committed transactions into batches (`cdc.apply.batch`): `BatchBuilder`.

Pure: no I/O. It routes each change to its table's batch (the table a Relation describes
is resolved once per Relation object), cuts a transaction larger than the batch size into
several batches, and folds the common changes in C (`cdc.apply._fold`) and the others by
the rules of `cdc.apply.rowimages` (the reference: the C loop must give what they give).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from cdc.apply import rowimages
from cdc.apply.batch import Batch, Key, RowImage, TableBatch, TableName, commit_time_text, widen
from cdc.apply.changes import Change, Op, RecordChunk, Transaction
from cdc.apply.copybounds import CopyBounds
from cdc.apply.rowimages import KeyGetter, image, no_key
from cdc.errors import Action, CdcError
from cdc.protocol import UNCHANGED_TOAST, Delete, Insert, Relation, Update
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.versions import version_of

NativeFold = Callable[..., int]
_fold: NativeFold | None
try:  # built by `pip install` where a C compiler is available; optional
    from cdc.apply._fold import fold as _fold
except ImportError:  # pragma: no cover - depends on the build
    _fold = None

# The table a relation describes (its key positions: `key_indexes`; none for an
# append-only log, whose rows are keyed by version); None when the table cannot be
# replicated (it is quarantined: its changes are skipped while the other tables flow).
SchemaResolver = Callable[[Relation], TableSchema | None]
# Per Relation object: (relation, its table batch or None if quarantined, remap, key getter)
Route = tuple[Relation, TableBatch | None, tuple[int, ...] | None, KeyGetter]


class NativePlan:
    """What the C loop needs for chunks of one list of relations (each transaction has a
    list of its own, of the same Relation objects): per relation its rows, key positions
    and width, or None (left to Python), and the changes it folded per table and kind,
    added to the tables' `op_counts` when the plan is dropped."""

    __slots__ = ("counts", "relations", "routes", "tables")

    def __init__(self, relations: list[Relation], routes: dict[int, Route]) -> None:
        self.relations = tuple(relations)
        self.tables: list[TableBatch | None] = []
        self.routes: list[tuple[dict[Key, RowImage], tuple[int, ...], int] | None] = []
        for relation in relations:
            # Only tables this batch has routed already: the first change of a relation
            # goes through Python (routing it may widen its table's layout).
            route = routes.get(id(relation))
            table = None
            if route is not None and route[0] is relation and route[2] is None:
                table = route[1]
            if table is not None and not table.key_positions:
                table = None  # an append-only log: folded in Python
            self.tables.append(table)
            self.routes.append(
                None if table is None else (table.rows, table.key_positions, len(table.columns))
            )
        self.counts = [0] * (3 * len(relations))

    def fits(self, relations: list[Relation]) -> bool:
        mine = self.relations
        return len(mine) == len(relations) and all(map(operator.is_, mine, relations))

    def count_in(self) -> None:
        """Add the changes folded under this plan to their tables' `op_counts`."""
        counts = self.counts
        for table, inserts, updates, deletes in zip(
            self.tables, counts[0::3], counts[1::3], counts[2::3], strict=True
        ):
            if table is not None and (inserts or updates or deletes):
                op_counts = table.op_counts
                for op, n in ((Op.INSERT, inserts), (Op.UPDATE, updates), (Op.DELETE, deletes)):
                    if n:
                        op_counts[op] = op_counts.get(op, 0) + n
        self.counts = [0] * len(counts)


class BatchBuilder:
    """Accumulate transactions with `add`; `build` returns the batch and starts a new one."""

    def __init__(
        self,
        resolve: SchemaResolver,
        max_changes: int | None = None,
        native: bool = True,
        set_aside: Callable[[TableName, CdcError], None] | None = None,
        bounds: CopyBounds | None = None,
    ) -> None:
        """`max_changes`: a transaction larger than this is cut into several batches (its
        end is acknowledged only with the batch that completes it), so memory stays bounded
        by the batch size, not by the largest transaction. `native`: fold in C when
        `cdc.apply._fold` is built (False: always in Python, the reference). `set_aside`:
        quarantines a table changed in a way its targets cannot follow (`widen`; None:
        the error is raised). `bounds`: where tables' copies divide the stream (a batch
        ends there)."""
        self._native_fold = _fold if native else None
        self._resolve = resolve
        self._set_aside = set_aside
        self._max_changes = max_changes
        self._bounds = bounds
        self._commit_lsn = 0  # of the transaction being folded
        self._last_end = Lsn.ZERO
        self._batch = Batch()
        self._relations: dict[TableName, Relation] = {}  # the latest of each table's
        self._routes: dict[int, Route] = {}
        self._plans: dict[int, NativePlan] = {}  # by the id of their first relation

    @property
    def changes(self) -> int:
        return self._batch.changes

    @property
    def transactions(self) -> int:
        return self._batch.transactions

    def build(self) -> Batch:
        self._forget_routes()
        batch, self._batch = self._batch, Batch()
        self._relations.clear()
        return batch

    def _forget_routes(self) -> None:
        """Routes and native plans are out of date (a new batch, a widened or set-aside
        table): drop both."""
        self._drop_plans()
        self._routes.clear()

    def _drop_plans(self) -> None:
        """Count in what the native plans folded, and drop them."""
        for plan in self._plans.values():
            plan.count_in()
        self._plans.clear()

    def add(self, txn: Transaction, emit: Callable[[Batch], None] | None = None) -> list[Batch]:
        """Fold `txn` in. Batches that fill up on the way (usually none) go to `emit` as soon
        as they are full, so a huge transaction never holds more than one batch here; without
        `emit` they are returned."""
        full: list[Batch] = []
        hand_over = emit if emit is not None else full.append
        limit = self._max_changes
        batch = self._batch
        bounds = self._bounds
        if bounds is not None and batch.tables and bounds.splits(batch.tables, txn.commit_lsn):
            hand_over(self.build())
            batch = self._batch
        self._commit_lsn = txn.commit_lsn
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
        relations = chunk.relations
        key = id(relations[0]) if relations else 0
        plan = self._plans.get(key)
        if plan is None or not plan.fits(relations):
            if plan is not None:
                plan.count_in()
            plan = self._plans[key] = NativePlan(relations, self._routes)
        return fold(
            chunk.records, start, stop, plan.routes, chunk.first_ordinal, commit_high,
            plan.counts, Insert, Update, Delete, RowImage, UNCHANGED_TOAST,
        )  # fmt: skip

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
                if not rowimages.append(table, op, version, new, remap):
                    batch.skipped += 1
                continue
            if remap is None:
                if op is insert:
                    key = key_of(new)  # type: ignore[arg-type]
                    if key not in rows:
                        rows[key] = image((version, False, new, True))
                        continue
                    if UNCHANGED_TOAST not in new:  # type: ignore[operator]
                        rows[key] = image((version, False, new, False))
                        continue
                elif op is update and old is None:
                    rowimages.upsert(table, key_of, new, version)  # type: ignore[arg-type]
                    continue
            if op is truncate:
                rowimages.truncate(table, version)
                continue
            if op is delete:
                assert old is not None
                rowimages.tombstone(table, key_of, rowimages.relayout(old, remap), version)
                continue
            assert new is not None
            rowimages.update(table, key_of, rowimages.relayout(new, remap), old, remap, version)

    def _route(self, relation: Relation) -> Route:
        """Where changes of `relation` go in this batch (cached per Relation object)."""
        table = self._table(relation)
        if table is None:
            route: Route = (relation, None, None, no_key)
        else:
            route = (relation, table, _remap(table, relation), rowimages.key_getter(table))
        self._drop_plans()  # they left this relation to Python
        self._routes[id(relation)] = route
        return route

    def _table(self, relation: Relation) -> TableBatch | None:
        name = (relation.namespace, relation.name)
        table = self._batch.tables.get(name)
        if table is None:
            schema = self._resolve(relation)
            if schema is None:
                return None
            table = TableBatch(schema, first_commit=self._commit_lsn)
            table.commit_times = self._batch.commit_time_text
            self._batch.tables[name] = table
            self._relations[name] = relation
        elif self._relations[name] is not relation:
            schema = self._resolve(relation)
            if schema is None:  # set aside by this change: so are its rows of this batch
                del self._batch.tables[name]
                self._forget_routes()
                return None
            try:
                self._adopt(table, relation, schema)
            except CdcError as exc:
                if self._set_aside is None or exc.policy.action is not Action.QUARANTINE_TABLE:
                    raise
                self._set_aside(name, exc)
                del self._batch.tables[name]
                self._forget_routes()
                return None
        return table

    def _adopt(self, table: TableBatch, relation: Relation, schema: TableSchema) -> None:
        """A new Relation for a table already in the batch: widen the layout by name."""
        widened = widen(table.schema, schema)
        added = len(widened.columns) - len(table.columns)
        if added:
            # What the rows from before the change hold at the source in the columns added.
            pad = tuple(c.missing for c in widened.columns[-added:])
            table.rows = {
                key: image._replace(values=image.values + pad) for key, image in table.rows.items()
            }
        table.relayout(widened)  # the same key (`widen`): the rows stay keyed as they are
        self._relations[table.name] = relation
        self._forget_routes()  # their remaps and rows may be out of date


def _remap(table: TableBatch, relation: Relation) -> tuple[int, ...] | None:
    """Positions of the table layout's columns in `relation`'s tuple (None: same)."""
    names = tuple(c.name for c in relation.columns)
    if names == table.columns:
        return None
    return tuple(names.index(c) if c in names else -1 for c in table.columns)


def native_fold() -> NativeFold | None:
    """The C fold in use; None if it was not built."""
    return _fold
