"""How one change folds into a table batch (`cdc.apply.batch`): pure rules, no I/O.

Later changes of a key replace its image, their unchanged TOAST values taken from the
image they replace; a delete becomes a tombstone that keeps the row's last known values;
a primary-key change is a tombstone for the old key plus an image for the new one, whose
unchanged values come from the old key's image (or, if the batch has none, from the
historic rows noted in `TableBatch.fill_from`). A table without key positions is an
append-only log: every insert is a row of its own, keyed by its version.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from operator import itemgetter

from cdc.apply.batch import NO_BOUND, FillSource, Key, RowImage, TableBatch
from cdc.apply.changes import Op
from cdc.protocol import UNCHANGED_TOAST, TupleData, TupleValue

KeyGetter = Callable[[TupleData], Key]

# `RowImage((version, deleted, values, inserted))` without the Python-level `__new__` of a
# NamedTuple: one is built per change. Always all four fields.
image = functools.partial(tuple.__new__, RowImage)


def update(
    table: TableBatch,
    key_of: KeyGetter,
    new: TupleData,
    old: TupleData | None,
    remap: tuple[int, ...] | None,
    version: int,
) -> None:
    """An update (or an insert over a row of the batch), `new` laid out as the table."""
    if old is None:
        upsert(table, key_of, new, version)
        return
    old = relayout(old, remap)
    if UNCHANGED_TOAST in new:
        # REPLICA IDENTITY FULL: the old row holds the unchanged values. (An old key
        # has every column too, the others NULL; a TOASTed value is never NULL.)
        new = tuple(
            o if n is UNCHANGED_TOAST and o is not None else n
            for n, o in zip(new, old, strict=True)
        )
    old_key = key_of(old)
    if old_key == key_of(new):
        upsert(table, key_of, new, version)
        return
    # The key changed: unchanged values come from the old key's image, taken before
    # its tombstone replaces it; the new key has no row of its own yet.
    upsert(table, key_of, new, version, source=old_key)
    tombstone(table, key_of, old, version)


def append(
    table: TableBatch,
    op: Op,
    version: int,
    new: TupleData | None,
    remap: tuple[int, ...] | None,
) -> bool:
    """A change of an append-only log: an insert is a row keyed by its version (so a
    replay writes the same rows again); its publication sends no updates or deletes
    (False: the change was skipped)."""
    if op is Op.INSERT:
        assert new is not None
        key = (b"%d" % version,)
        table.rows[key] = image((version, False, relayout(new, remap), True))
    elif op is Op.TRUNCATE:
        truncate(table, version)
    else:
        return False
    return True


def truncate(table: TableBatch, version: int) -> None:
    """A TRUNCATE drops the table's earlier images and records its version."""
    table.rows.clear()
    table.fill_from.clear()
    table.truncate_version = version


def tombstone(table: TableBatch, key_of: KeyGetter, old: TupleData, version: int) -> None:
    """A deleted row keeps its last known values: from this batch, else the target's."""
    key = key_of(old)
    previous = table.rows.get(key)
    if previous is not None and not previous.deleted:
        # Its values, and where any it lacks come from, stay as they were.
        table.rows[key] = image((version, True, previous.values, False))
        return
    values: list[TupleValue] = [UNCHANGED_TOAST] * len(table.columns)
    for i in table.key_positions:
        values[i] = old[i]
    table.rows[key] = image((version, True, tuple(values), False))
    table.fill_from.pop(key, None)


def upsert(
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
        rows[key] = image((version, False, new, False))
        return
    if source is None:
        source = key
    previous = rows.get(source)
    live = previous is not None and not previous.deleted
    if live:
        new = filled(new, previous.values)  # type: ignore[union-attr]
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
    rows[key] = image((version, False, new, False))


def no_key(values: TupleData) -> Key:
    raise AssertionError("a quarantined table has no key")


def key_getter(table: TableBatch) -> KeyGetter:
    """The key tuple of a row in `table`'s layout (itemgetter: no Python loop per row)."""
    positions = table.key_positions
    if not positions:
        return no_key  # an append-only log: its rows are keyed by version
    if len(positions) == 1:
        (only,) = positions
        return lambda values: (values[only],)
    getter = itemgetter(*positions)
    return lambda values: getter(values)


def filled(new: TupleData, earlier: TupleData) -> TupleData:
    """`new` with its UNCHANGED_TOAST values taken from `earlier` (same layout)."""
    return tuple(e if n is UNCHANGED_TOAST else n for n, e in zip(new, earlier, strict=True))


def relayout(values: TupleData, remap: tuple[int, ...] | None) -> TupleData:
    if remap is None:
        return values
    return tuple(values[i] if i >= 0 else None for i in remap)
