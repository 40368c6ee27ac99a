"""Completing a batch from historic rows (`cdc.sinks.historic.fill`): which row gives a
value the stream did not resend, and what happens when none does."""

from __future__ import annotations

import pytest

from cdc.apply.batch import NO_BOUND, FillSource, Key, RowImage, TableBatch
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
    assert unfilled == []


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
    assert unfilled == []


def test_rows_below_the_batch_truncation_give_nothing() -> None:
    batch = table(**{"1": (None, False), "2": (None, True)})
    batch.truncate_version = 8
    donors: dict[Key, fill.Donor] = {
        (b"1",): fill.Donor(7, (b"1", b"gone")),
        (b"2",): fill.Donor(8, (b"2", b"kept")),
    }
    completed, unfilled, _ = fill.fill(batch, fill.plan(batch, [(b"1",), (b"2",)]), donors)
    assert [image.values for image in completed] == [(b"1", None), (b"2", b"kept")]
    assert unfilled == [V]


def test_a_tombstone_without_a_donor_is_not_counted_as_unfilled() -> None:
    batch = table(**{"1": (None, True)})
    completed, unfilled, _ = fill.fill(batch, fill.plan(batch, [(b"1",)]), {})
    assert completed == [RowImage(V, True, (b"1", None))]
    assert unfilled == []


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


def earlier_table(version: int, **rows: bytes) -> TableBatch:
    """A completed earlier batch of the same table: complete rows keyed by id."""
    older = TableBatch(schema_of(RELATION, (0,)))
    for key, value in rows.items():
        older.rows[(key.encode(),)] = RowImage(version, False, (key.encode(), value))
    return older


def test_an_earlier_unwritten_batch_gives_its_latest_image_before_historic() -> None:
    """A key an earlier batch (completed, not yet written) holds takes that batch's image,
    the newest batch first: historic still holds the state before them. A key no earlier
    batch holds reads historic, and only its rows are read."""
    batch = table(**{"1": (None, False), "2": (None, True), "3": (None, False)})
    keys = [(b"1",), (b"2",), (b"3",)]
    planned = fill.plan(batch, keys)
    earlier = [earlier_table(6, **{"1": b"older", "2": b"b6"}), earlier_table(8, **{"1": b"a8"})]
    held = fill.earlier_donors(batch, earlier, planned.donor_keys)
    assert held.donors == {(b"1",): (8, (b"1", b"a8")), (b"2",): (6, (b"2", b"b6"))}
    assert fill.to_read(planned, held, 0) == [(b"3",)]
    donors: dict[Key, fill.Donor] = {
        (b"1",): fill.Donor(5, (b"1", b"historic")),
        (b"3",): fill.Donor(5, (b"3", b"c")),
    }
    filled = fill.fill(batch, planned, donors, held)
    assert [image.values for image in filled.completed] == [
        (b"1", b"a8"), (b"2", b"b6"), (b"3", b"c")
    ]  # fmt: skip
    # The tombstone's own key's row will hold those values once its batch is written.
    assert filled.kept == [batch.rows[(b"2",)]]


def test_a_truncation_in_an_earlier_batch_hides_the_historic_rows_below_it() -> None:
    batch = table(**{"1": (None, False)})
    truncated = earlier_table(6)
    truncated.truncate_version = 4
    planned = fill.plan(batch, [(b"1",)])
    held = fill.earlier_donors(batch, [truncated], planned.donor_keys)
    donors: dict[Key, fill.Donor] = {(b"1",): fill.Donor(3, (b"1", b"removed by the truncation"))}
    completed, unfilled, _ = fill.fill(batch, planned, donors, held)
    assert completed[0].values == (b"1", None)
    assert unfilled == [V]


def test_a_moved_row_falls_back_to_historic_where_the_earlier_image_is_out_of_range() -> None:
    """A replay: historic holds the new key's row written by a first run (in the range of
    the move's own version); the earlier batch's image of that key is older, so the
    historic row is the one the change read."""
    batch = table(**{"7": (None, False)})
    batch.fill_from[(b"7",)] = (FillSource((b"7",), 20, NO_BOUND), FillSource((b"5",), 0, 21))
    planned = fill.plan(batch, [(b"7",)])
    held = fill.earlier_donors(batch, [earlier_table(6, **{"7": b"old", "5": b"E"})], [(b"7",)])
    assert fill.to_read(planned, held, 0) == [(b"7",), (b"5",)]
    donors: dict[Key, fill.Donor] = {(b"7",): fill.Donor(20, (b"7", b"replayed"))}
    completed, _, _ = fill.fill(batch, planned, donors, held)
    assert completed[0].values == (b"7", b"replayed")


def test_an_earlier_batch_of_another_layout_gives_its_values_by_column_name() -> None:
    batch = table(**{"1": (None, False)})
    older = TableBatch(schema_of(RELATION, (0,)))
    older.columns = ("gone", "v", "id")  # a column removed since, and another order
    older.rows[(b"1",)] = RowImage(6, False, (b"x", b"by name", b"1"))
    held = fill.earlier_donors(batch, [older], [(b"1",)])
    assert held.donors[(b"1",)] == (6, (b"1", b"by name"))


def test_an_image_older_than_the_tables_last_copy_is_no_donor() -> None:
    """A table published again after a gap (made again under its name): the stream's
    images from before its copy may lack changes the copy holds, and historic keeps the
    copy's row over them. The key is read from historic instead."""
    batch = table(**{"1": (None, False), "2": (None, False)})
    keys = [(b"1",), (b"2",)]
    planned = fill.plan(batch, keys)
    earlier = [earlier_table(6, **{"1": b"before the gap"}), earlier_table(9, **{"2": b"b9"})]
    held = fill.earlier_donors(batch, earlier, planned.donor_keys, since=8)
    assert held.donors == {(b"2",): (9, (b"2", b"b9"))}
    assert fill.to_read(planned, held, 0) == [(b"1",)]
    donors: dict[Key, fill.Donor] = {(b"1",): fill.Donor(8, (b"1", b"copied"))}
    filled = fill.fill(batch, planned, donors, held)
    assert [image.values for image in filled.completed] == [(b"1", b"copied"), (b"2", b"b9")]
