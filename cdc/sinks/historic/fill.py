"""Completing a batch: the values the stream did not resend, taken from historic rows.

Pure: the historic sink reads the rows (`cdc.sinks.historic.sql.donors_sql`) and hands
them here. A row's unchanged values belong to its image under the key it had before the
batch changed it: its own key's row, or for a row moved to another key in this batch the
rows `TableBatch.fill_from` lists, in order, each only while its `_version` is in the
range that proves it is still the state the change read. A key's row is its latest image
in an earlier batch not yet written to historic (`earlier_donors`: exactly the state
historic will hold once that batch is written), else its historic row; historic rows
below a truncation, of this batch or of an earlier one not yet written, are gone once
those are applied: never taken.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import itemgetter
from typing import NamedTuple

from cdc.apply import rowimages
from cdc.apply.batch import NO_BOUND, FillSource, Key, RowImage, TableBatch
from cdc.protocol import UNCHANGED_TOAST, TupleData


class Donor(NamedTuple):
    """A historic row: its `_version` and its values, in the table's column layout."""

    version: int
    values: tuple[bytes | None, ...]


# `make_donor((version, values))`: a `Donor` without the Python-level `__new__` of a
# NamedTuple (one per historic row read).
make_donor = functools.partial(tuple.__new__, Donor)


class Plan(NamedTuple):
    """For each incomplete row, the historic rows that may hold its values, in order (none
    listed: its own key's row, whatever its version); and every key among them once (the
    rows to read)."""

    rows: list[tuple[Key, tuple[FillSource, ...]]]
    donor_keys: list[Key]


def plan(table: TableBatch, keys: Sequence[Key]) -> Plan:
    fill_from = table.fill_from
    if not fill_from:  # every row fills from its own key's row: nothing made per row
        return Plan([(key, ()) for key in keys], list(keys))
    rows = [(key, fill_from.get(key, ())) for key in keys]
    donor_keys = list(
        dict.fromkeys(source.key for key, sources in rows for source in sources or (_own(key),))
    )
    return Plan(rows, donor_keys)


class Earlier(NamedTuple):
    """What earlier batches not yet written to historic hold of one table: the latest image
    of each key they hold (as a donor), and the highest truncation among them (historic
    rows below it are about to be removed)."""

    donors: dict[Key, Donor]
    floor: int


def earlier_donors(
    table: TableBatch, earlier: Sequence[TableBatch], keys: Sequence[Key], since: int = 0
) -> Earlier:
    """The images of `keys` in `earlier` (the same table in batches completed before
    `table`'s and not yet written to historic, oldest first), laid out as `table`'s rows.
    `since`: the version of the table's last copy. An image older than it is no donor:
    the stream before a copy may lack changes the copy holds (those made before the table
    was published again), and historic keeps the copy's row over it."""
    donors: dict[Key, Donor] = {}
    floor = 0
    names = table.columns
    for older in reversed(earlier):  # the newest image of a key wins
        floor = max(floor, older.truncate_version or 0)
        rows = older.rows
        places = None  # the same layout; else (a column removed or added since) by name
        if older.columns != names:
            where = {name: i for i, name in enumerate(older.columns)}
            places = [where.get(name) for name in names]
        for key in keys:
            if key in donors or (image := rows.get(key)) is None or image.version < since:
                continue
            values = image.values
            if places is not None:
                values = tuple(None if i is None else values[i] for i in places)
            donors[key] = make_donor((image.version, values))
    return Earlier(donors, floor)


def to_read(plan: Plan, earlier: Earlier, floor: int) -> list[Key]:
    """The donor keys whose historic rows may be needed: a row filled from its own key
    whose image an earlier batch holds takes that image, never the historic row."""
    held = earlier.donors
    if not held:
        return plan.donor_keys
    # Keys named by a moved row's sources: their historic row may be a replay's write.
    sourced = {source.key for _, sources in plan.rows for source in sources}
    return [
        key
        for key in plan.donor_keys
        if (donor := held.get(key)) is None or donor.version < floor or key in sourced
    ]


def _own(key: Key) -> FillSource:
    return FillSource(key, 0, NO_BOUND)


NO_EARLIER = Earlier({}, 0)


class Filled(NamedTuple):
    completed: list[RowImage]  # the planned rows, complete
    unfilled: list[int]  # the versions of live rows without a donor (unknown values: NULL)
    # Tombstones that took every value from their own key's historic row: that row holds
    # them already (their historic write need only mark it deleted).
    kept: list[RowImage]


def fill(
    table: TableBatch, plan: Plan, donors: dict[Key, Donor], earlier: Earlier = NO_EARLIER
) -> Filled:
    """Complete the planned rows of `table` in place from `earlier` images and historic
    `donors` (by key); a value no donor holds becomes NULL."""
    floor = table.truncate_version or 0
    read_floor = max(floor, earlier.floor)
    held = earlier.donors
    rows = table.rows
    completed = []
    kept = []
    unfilled: list[int] = []
    # A row whose every value but its key is to be filled from its own key's row (a
    # tombstone of a row the batch held no image of) takes that row's values as they are:
    # no value copied or compared one by one.
    to_fill = len(table.columns) - len(table.schema.key_indexes)
    key_of = itemgetter(*table.schema.key_indexes) if table.schema.key_indexes else None
    for key, sources in plan.rows:
        donor, own = _donor(key, sources, held, donors, floor, read_floor)
        image = rows[key]
        values: TupleData
        if donor is None:
            if not image.deleted:
                unfilled.append(image.version)
            values = tuple(None if v is UNCHANGED_TOAST else v for v in image.values)
        elif (
            own
            and key_of is not None
            and image.values.count(UNCHANGED_TOAST) == to_fill
            and key_of(donor.values) == key_of(image.values)
        ):
            values = donor.values
        else:
            values = tuple(
                donor.values[i] if v is UNCHANGED_TOAST else v for i, v in enumerate(image.values)
            )
        rows[key] = image = rowimages.image((image.version, image.deleted, values, image.inserted))
        completed.append(image)
        if image.deleted and own and not floor:
            assert donor is not None
            if values is donor.values or values == donor.values:
                kept.append(image)
    return Filled(completed, unfilled, kept)


def _donor(
    key: Key,
    sources: tuple[FillSource, ...],
    held: dict[Key, Donor],
    donors: dict[Key, Donor],
    floor: int,
    read_floor: int,
) -> tuple[Donor | None, bool]:
    """The row that holds `key`'s unchanged values, and whether it is `key`'s own: for each
    source in order (none: its own key's row, whatever its version), an earlier batch's
    image, else the historic row, the first whose version is in the source's range."""
    for source in sources or (_own(key),):
        lowest = max(source.lowest, floor)
        donor = held.get(source.key)
        if donor is not None and lowest <= donor.version < source.bound:
            return donor, source.key == key
        donor = donors.get(source.key)
        if donor is not None and max(lowest, read_floor) <= donor.version < source.bound:
            return donor, source.key == key
    return None, False
