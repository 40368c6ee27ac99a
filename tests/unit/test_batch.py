"""Folding transactions into batches: collapse per key, tombstones, key changes, truncate,
and cutting a transaction larger than the batch size."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cdc.batch import BatchBuilder, RowImage
from cdc.changes import Change, Op, Transaction
from cdc.lsn import Lsn
from cdc.pgoutput import UNCHANGED_TOAST, Relation, RelationColumn, TupleData
from cdc.pgoutput.tags import ReplicaIdentity

RELATION = Relation(
    xid=None, oid=1, namespace="s", name="t", replica_identity=ReplicaIdentity.DEFAULT,
    columns=(RelationColumn(True, "id", 23, -1), RelationColumn(False, "v", 25, -1)),
)  # fmt: skip


def txn(
    commit: int, changes: Sequence[tuple[Op, TupleData | None, TupleData | None]]
) -> Transaction:
    def iterate() -> Iterator[Change]:
        for ordinal, (op, new, old) in enumerate(changes, start=1):
            yield Change(op, RELATION, ordinal, new, old)

    return Transaction(1, Lsn(commit), Lsn(commit + 1), 0, iterate, lambda: None)


def keys(relation: Relation) -> tuple[int, ...]:
    return (0,)


def test_last_image_wins_and_deletes_are_tombstones() -> None:
    builder = BatchBuilder(keys)
    builder.add(txn(100, [
        (Op.INSERT, (b"1", b"a"), None),
        (Op.UPDATE, (b"1", UNCHANGED_TOAST), None),
        (Op.INSERT, (b"2", b"b"), None),
        (Op.DELETE, None, (b"2", None)),
        (Op.UPDATE, (b"9", b"moved"), (b"1", None)),
    ]))  # fmt: skip
    batch = builder.build()
    rows = batch.tables["s", "t"].rows
    assert rows[(b"1",)].deleted and rows[(b"1",)].values == (b"1", b"a")
    assert rows[(b"2",)].deleted and rows[(b"2",)].values == (b"2", b"b")
    assert rows[(b"9",)] == RowImage((100 << 64) | 5, False, (b"9", b"moved"))
    assert not rows[(b"2",)].inserted, "a tombstone is never a new row"
    assert batch.end_lsn == 101 and batch.transactions == 1 and batch.changes == 5


def test_rows_inserted_first_in_the_batch_are_marked_new() -> None:
    builder = BatchBuilder(keys)
    builder.add(txn(5, [
        (Op.INSERT, (b"1", b"a"), None),
        (Op.INSERT, (b"2", b"b"), None),
        (Op.UPDATE, (b"2", b"c"), None),
        (Op.DELETE, None, (b"3", None)),
        (Op.INSERT, (b"3", b"d"), None),
    ]))  # fmt: skip
    rows = builder.build().tables["s", "t"].rows
    assert rows[(b"1",)].inserted
    assert not rows[(b"2",)].inserted, "updated after its insert: an image, not a new row"
    assert not rows[(b"3",)].inserted, "inserted after a delete: the key may be in the target"


def test_truncate_drops_earlier_images_and_records_its_version() -> None:
    builder = BatchBuilder(keys)
    builder.add(txn(7, [(Op.INSERT, (b"1", b"a"), None), (Op.TRUNCATE, None, None),
                        (Op.INSERT, (b"2", b"b"), None)]))  # fmt: skip
    table = builder.build().tables["s", "t"]
    assert table.truncate_version == (7 << 64) | 2
    assert list(table.rows) == [(b"2",)]


def test_a_large_transaction_is_cut_and_acknowledged_only_when_complete() -> None:
    builder = BatchBuilder(keys, max_changes=4)
    assert builder.add(txn(10, [(Op.INSERT, (b"0", b"x"), None)])) == []
    big = [(Op.INSERT, (str(i).encode(), b"y"), None) for i in range(1, 11)]
    cut = builder.add(txn(20, big))
    assert [b.changes for b in cut] == [4, 4]
    assert all(b.end_lsn == 11 for b in cut), "a partial batch must not acknowledge the txn"
    assert cut[0].transactions == 1 and cut[1].transactions == 0
    rest = builder.build()
    assert rest.changes == 3 and rest.transactions == 1 and rest.end_lsn == 21
    assert sum(len(b.tables["s", "t"].rows) for b in [*cut, rest]) == 11
