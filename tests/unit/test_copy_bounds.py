"""A batch never folds a change made after a table's copy snapshot onto an image of the
table's row from before it (`cdc.apply.copybounds`)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cdc.apply.batcher import BatchBuilder
from cdc.apply.changes import Op
from cdc.apply.copybounds import CopyBounds
from cdc.protocol import UNCHANGED_TOAST
from tests.unit.test_batch import PAIRS, keys, relation_txn, resolving, txn

pytestmark = pytest.mark.unit

T = ("s", "t")


@pytest.fixture(params=["C", "Python"])
def builder(request: pytest.FixtureRequest) -> Callable[[CopyBounds], BatchBuilder]:
    native = request.param == "C"
    return lambda bounds: BatchBuilder(resolving(keys), native=native, bounds=bounds)


def test_an_update_after_the_copy_snapshot_is_not_filled_from_an_image_before_it(
    builder: Callable[[CopyBounds], BatchBuilder],
) -> None:
    """The incident: a table made again under its name (its rows changed without a change
    streamed), copied at snapshot 200; a replay folded an update at 300 that left `v`
    unchanged onto the image of 100, and stored the stale value over the copy's."""
    bounds = CopyBounds()
    bounds.copied(T, 200)
    fold = builder(bounds)
    assert fold.add(txn(100, [(Op.INSERT, (b"1", b"stale"), None)])) == []
    (before,) = fold.add(txn(300, [(Op.UPDATE, (b"1", UNCHANGED_TOAST), None)]))
    assert before.tables[T].rows[(b"1",)].values == (b"1", b"stale")
    after = fold.build().tables[T].rows[(b"1",)]
    assert after.values == (b"1", UNCHANGED_TOAST), "left to the fill, which reads the copy"
    # Passed: the next transactions fold together again.
    assert fold.add(txn(400, [(Op.UPDATE, (b"1", b"new"), None)])) == []
    assert fold.add(txn(500, [(Op.UPDATE, (b"1", UNCHANGED_TOAST), None)])) == []
    assert fold.build().tables[T].rows[(b"1",)].values == (b"1", b"new")


def test_a_boundary_divides_only_a_batch_that_holds_the_table_from_before_it(
    builder: Callable[[CopyBounds], BatchBuilder],
) -> None:
    bounds = CopyBounds()
    bounds.copied(T, 200)
    bounds.copied(T, 50)  # an older copy, passed
    fold = builder(bounds)
    other = [(PAIRS, (Op.INSERT, (b"1", b"2", b"x"), None))]
    assert fold.add(relation_txn(100, other)) == []
    assert fold.add(txn(300, [(Op.INSERT, (b"1", b"a"), None)])) == [], "no image from before"
    assert fold.add(txn(250, [(Op.UPDATE, (b"1", UNCHANGED_TOAST), None)])) == []
    assert fold.build().transactions == 3


def test_while_a_snapshot_is_taken_a_batch_holds_the_table_of_one_transaction(
    builder: Callable[[CopyBounds], BatchBuilder],
) -> None:
    """The stream may pass the snapshot's position before it is known."""
    bounds = CopyBounds()
    fold = builder(bounds)
    assert fold.add(txn(100, [(Op.INSERT, (b"1", b"a"), None)])) == []
    bounds.taking(T)
    assert len(fold.add(txn(150, [(Op.UPDATE, (b"1", UNCHANGED_TOAST), None)]))) == 1
    assert len(fold.add(txn(160, [(Op.UPDATE, (b"1", b"b"), None)]))) == 1
    bounds.taken(T, 155)
    assert fold.add(txn(170, [(Op.UPDATE, (b"1", UNCHANGED_TOAST), None)])) == []
    assert fold.build().tables[T].rows[(b"1",)].values == (b"1", b"b")


def test_a_copy_that_runs_on_divides_the_stream_only_at_its_snapshots(
    builder: Callable[[CopyBounds], BatchBuilder],
) -> None:
    """Once a snapshot's position is known the table's changes fold again, however long
    the copy runs; a table copied again (rewritten meanwhile) divides it at each snapshot."""
    bounds = CopyBounds()
    bounds.taking(T)
    bounds.taken(T, 200)
    fold = builder(bounds)
    unchanged = [(Op.UPDATE, (b"1", UNCHANGED_TOAST), None)]
    assert fold.add(txn(100, [(Op.INSERT, (b"1", b"a"), None)])) == []
    assert fold.add(txn(150, unchanged)) == [], "before the snapshot: folded"
    (before,) = fold.add(txn(250, unchanged))
    assert before.transactions == 2
    assert fold.add(txn(260, unchanged)) == [], "after it: folded"
    bounds.taking(T)  # copied again
    assert [b.transactions for b in fold.add(txn(270, unchanged))] == [2]
    bounds.taken(T, 265)
    assert fold.add(txn(280, unchanged)) == [], "after the second snapshot: folded"
    assert fold.build().transactions == 2
    assert fold.add(txn(290, unchanged)) == []
    bounds.taking(T)
    assert len(fold.add(txn(300, unchanged))) == 1
    bounds.taken(T, None)  # it could not be taken
    assert fold.add(txn(310, unchanged)) == [], "folded again"
