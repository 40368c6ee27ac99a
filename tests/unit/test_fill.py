"""Completing a batch from historic rows (`cdc.sinks.historic.fill`): which row gives a
value the stream did not resend, and what happens when none does."""

from __future__ import annotations

import pytest

from cdc.apply.batch import FillSource, Key, RowImage, TableBatch
from cdc.protocol import UNCHANGED_TOAST
from cdc.sinks.historic import fill
from tests.unit.test_batch import RELATION, schema_of

pytestmark = pytest.mark.unit

V = 10 << 64  # a version of this batch


def table(**rows: tuple[bytes | None, bool]) -> TableBatch:
    """Rows keyed by id, each with `v` unchanged (or given) and deleted or not."""
    batch = TableBatch(schema_of(RELATION, (0,)))
    for key, (value, deleted) in rows.items():
        v = UNCHANGED_TOAST if value is None else value
        batch.rows[(key.encode(),)] = RowImage(V, deleted, (key.encode(), v))
    return batch


def test_a_row_takes_its_own_keys_historic_values() -> None:
    batch = table(**{"1": (None, False), "2": (b"new", False)})
    planned = fill.plan(batch, [(b"1",)])
    assert planned.donor_keys == [(b"1",)]
    completed, unfilled, _ = fill.fill(batch, planned, {(b"1",): fill.Donor(5, (b"1", b"old"))})
    assert completed == [RowImage(V, False, (b"1", b"old"))]
    assert batch.rows[(b"1",)].values == (b"1", b"old")
    assert unfilled == 0


def test_a_moved_row_takes_the_first_donor_in_its_version_range() -> None:
    batch = table(**{"7": (None, False)})
    batch.fill_from[(b"7",)] = (FillSource((b"5",), 20, 30), FillSource((b"6",), 0, 40))
    planned = fill.plan(batch, [(b"7",)])
    assert planned.donor_keys == [(b"5",), (b"6",)]
    donors: dict[Key, fill.Donor] = {
        (b"5",): fill.Donor(30, (b"5", b"too new")),
        (b"6",): fill.Donor(39, (b"6", b"B")),
    }
    completed, unfilled, _ = fill.fill(batch, planned, donors)
    assert completed[0].values == (b"7", b"B")
    assert unfilled == 0


def test_rows_below_the_batch_truncation_give_nothing() -> None:
    batch = table(**{"1": (None, False), "2": (None, True)})
    batch.truncate_version = 8
    donors: dict[Key, fill.Donor] = {
        (b"1",): fill.Donor(7, (b"1", b"gone")),
        (b"2",): fill.Donor(8, (b"2", b"kept")),
    }
    completed, unfilled, _ = fill.fill(batch, fill.plan(batch, [(b"1",), (b"2",)]), donors)
    assert [image.values for image in completed] == [(b"1", None), (b"2", b"kept")]
    assert unfilled == 1


def test_a_tombstone_without_a_donor_is_not_counted_as_unfilled() -> None:
    batch = table(**{"1": (None, True)})
    completed, unfilled, _ = fill.fill(batch, fill.plan(batch, [(b"1",)]), {})
    assert completed == [RowImage(V, True, (b"1", None))]
    assert unfilled == 0


def test_only_tombstones_filled_from_their_own_row_are_kept_as_they_are() -> None:
    """A tombstone whose values all come from its own key's historic row: that row need
    only be marked deleted. Not one moved onto the key, nor a live row, nor one whose
    batch truncates the table (its row is gone once the batch is applied)."""
    batch = table(**{"1": (None, True), "2": (None, False), "3": (None, True)})
    batch.fill_from[(b"3",)] = (FillSource((b"4",), 0, 40),)
    donors: dict[Key, fill.Donor] = {
        (b"1",): fill.Donor(5, (b"1", b"a")),
        (b"2",): fill.Donor(5, (b"2", b"b")),
        (b"4",): fill.Donor(5, (b"4", b"d")),
    }
    keys = [(b"1",), (b"2",), (b"3",)]
    filled = fill.fill(batch, fill.plan(batch, keys), donors)
    assert filled.kept == [batch.rows[(b"1",)]] == [RowImage(V, True, (b"1", b"a"))]
    truncated = table(**{"1": (None, True)})
    truncated.truncate_version = 3
    assert fill.fill(truncated, fill.plan(truncated, [(b"1",)]), donors).kept == []
