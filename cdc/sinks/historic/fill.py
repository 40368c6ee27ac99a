"""Completing a batch: the values the stream did not resend, taken from historic rows.

Pure: the historic sink reads the rows (`cdc.sinks.historic.sql.donors_sql`) and hands
them here. A row's unchanged values belong to its image under the key it had before the
batch changed it: its own key's historic row, or for a row moved to another key in this
batch the historic rows `TableBatch.fill_from` lists, in order, each only while its
`_version` is in the range that proves it is still the state the change read. Historic
rows below the batch's truncation are gone once the batch is applied: never taken.
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


def _own(key: Key) -> FillSource:
    return FillSource(key, 0, NO_BOUND)


class Filled(NamedTuple):
    completed: list[RowImage]  # the planned rows, complete
    unfilled: int  # live rows that had no donor (their unknown values are NULL)
    # Tombstones that took every value from their own key's historic row: that row holds
    # them already (their historic write need only mark it deleted).
    kept: list[RowImage]


def fill(table: TableBatch, plan: Plan, donors: dict[Key, Donor]) -> Filled:
    """Complete the planned rows of `table` in place from `donors` (by key); a value no
    donor holds becomes NULL."""
    floor = table.truncate_version or 0
    rows = table.rows
    completed = []
    kept = []
    unfilled = 0
    # A row whose every value but its key is to be filled from its own key's row (a
    # tombstone of a row the batch held no image of) takes that row's values as they are:
    # no value copied or compared one by one.
    to_fill = len(table.columns) - len(table.schema.key_indexes)
    key_of = itemgetter(*table.schema.key_indexes) if table.schema.key_indexes else None
    for key, sources in plan.rows:
        donor = _donor(key, sources, donors, floor)
        image = rows[key]
        values: TupleData
        own = donor is not None and donor is donors.get(key)
        if donor is None:
            unfilled += not image.deleted
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
    key: Key, sources: tuple[FillSource, ...], donors: dict[Key, Donor], floor: int
) -> Donor | None:
    if not sources:  # its own key's row, whatever its version above the truncation
        donor = donors.get(key)
        return donor if donor is not None and floor <= donor.version else None
    for source in sources:
        donor = donors.get(source.key)
        if donor is not None and max(source.lowest, floor) <= donor.version < source.bound:
            return donor
    return None
