"""Folding transactions into batches: collapse per key, tombstones, key changes, truncate,
and cutting a transaction larger than the batch size. Every test folds both in C and in
Python; a property test checks that both give the same batches for random workloads."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.apply.batch import NO_BOUND, Batch, FillSource, RowImage, TableName, widen
from cdc.apply.batcher import BatchBuilder, SchemaResolver, native_fold
from cdc.apply.changes import Op, Record, RecordChunk, Transaction
from cdc.errors import CdcError, ErrorKind
from cdc.protocol import (
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Relation,
    RelationColumn,
    Truncate,
    TupleData,
    Update,
)
from cdc.protocol.lsn import Lsn
from cdc.protocol.tags import ReplicaIdentity, TupleMarker
from cdc.schema import Column, TableSchema, TypeKind

pytestmark = pytest.mark.unit

RELATION = Relation(
    xid=None, oid=1, namespace="s", name="t", replica_identity=ReplicaIdentity.DEFAULT,
    columns=(RelationColumn(True, "id", 23, -1), RelationColumn(False, "v", 25, -1)),
)  # fmt: skip
# The same table after `ADD COLUMN w`, and a table keyed by two columns.
WIDER = dataclasses.replace(
    RELATION, columns=(*RELATION.columns, RelationColumn(False, "w", 25, -1))
)
PAIRS = Relation(
    xid=None, oid=2, namespace="s", name="pairs", replica_identity=ReplicaIdentity.DEFAULT,
    columns=(RelationColumn(True, "a", 23, -1), RelationColumn(True, "b", 23, -1),
             RelationColumn(False, "v", 25, -1)),
)  # fmt: skip

ChangeSpec = tuple[Op, TupleData | None, TupleData | None]


def message(op: Op, new: TupleData | None, old: TupleData | None, oid: int) -> Any:
    if op is Op.INSERT:
        return Insert(None, oid, new)  # type: ignore[arg-type]
    if op is Op.UPDATE:
        return Update(None, oid, TupleMarker.KEY if old else None, old, new)  # type: ignore[arg-type]
    if op is Op.DELETE:
        return Delete(None, oid, TupleMarker.KEY, old)  # type: ignore[arg-type]
    return Truncate(None, False, False, (oid,))


def relation_txn(
    commit: int, changes: Sequence[tuple[Relation, ChangeSpec]], chunk: int = 3
) -> Transaction:
    """A transaction as the assembler makes it, in chunks of `chunk` records."""
    relations: list[Relation] = []
    records: list[Record] = []
    for relation, (op, new, old) in changes:
        if relation not in relations:
            relations.append(relation)
        records.append((None, relations.index(relation), message(op, new, old, relation.oid)))

    def chunks() -> Iterator[RecordChunk]:
        for start in range(0, len(records), chunk):
            yield RecordChunk(relations, start + 1, records[start : start + chunk])

    return Transaction(1, Lsn(commit), Lsn(commit + 1), 0, chunks, lambda: None)


def txn(commit: int, changes: Sequence[ChangeSpec]) -> Transaction:
    return relation_txn(commit, [(RELATION, change) for change in changes])


KeyPositions = Callable[[Relation], tuple[int, ...] | None]


def schema_of(relation: Relation, key: tuple[int, ...]) -> TableSchema:
    """The table `relation` describes, keyed by the columns at `key`."""
    columns = tuple(
        Column(c.name, c.type_oid, c.type_modifier, "text", i not in key, TypeKind.BASE)
        for i, c in enumerate(relation.columns)
    )
    return TableSchema(
        relation.namespace, relation.name, columns, tuple(columns[i].name for i in key), "d"
    )


def resolving(key_positions: KeyPositions) -> SchemaResolver:
    """A resolver of tables keyed at `key_positions(relation)` (None: quarantined)."""

    def resolve(relation: Relation) -> TableSchema | None:
        key = key_positions(relation)
        return None if key is None else schema_of(relation, key)

    return resolve


def keys(relation: Relation) -> tuple[int, ...]:
    return (0,)


def builder_of(
    key_positions: KeyPositions,
    max_changes: int | None = None,
    native: bool = True,
    set_aside: Callable[[TableName, CdcError], None] | None = None,
) -> BatchBuilder:
    return BatchBuilder(resolving(key_positions), max_changes, native=native, set_aside=set_aside)


@pytest.fixture(params=["C", "Python"])
def folding(request: pytest.FixtureRequest) -> Callable[..., BatchBuilder]:
    native = request.param == "C"
    if native:
        assert native_fold() is not None, "cdc.apply._fold is not built: run `make install`"
    return lambda key_positions, max_changes=None, set_aside=None: builder_of(
        key_positions, max_changes, native, set_aside
    )


def test_last_image_wins_and_deletes_are_tombstones(folding: Callable[..., BatchBuilder]) -> None:
    builder = folding(keys)
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


def test_rows_inserted_first_in_the_batch_are_marked_new(
    folding: Callable[..., BatchBuilder],
) -> None:
    builder = folding(keys)
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


def test_truncate_drops_earlier_images_and_records_its_version(
    folding: Callable[..., BatchBuilder],
) -> None:
    builder = folding(keys)
    builder.add(txn(7, [(Op.INSERT, (b"1", b"a"), None), (Op.TRUNCATE, None, None),
                        (Op.INSERT, (b"2", b"b"), None)]))  # fmt: skip
    table = builder.build().tables["s", "t"]
    assert table.truncate_version == (7 << 64) | 2
    assert list(table.rows) == [(b"2",)]


def test_a_large_transaction_is_cut_and_acknowledged_only_when_complete(
    folding: Callable[..., BatchBuilder],
) -> None:
    builder = folding(keys, max_changes=4)
    assert builder.add(txn(10, [(Op.INSERT, (b"0", b"x"), None)])) == []
    big = [(Op.INSERT, (str(i).encode(), b"y"), None) for i in range(1, 11)]
    cut = builder.add(txn(20, big))
    assert [b.changes for b in cut] == [4, 4]
    assert all(b.end_lsn == 11 for b in cut), "a partial batch must not acknowledge the txn"
    assert cut[0].transactions == 1 and cut[1].transactions == 0
    rest = builder.build()
    assert rest.changes == 3 and rest.transactions == 1 and rest.end_lsn == 21
    assert sum(len(b.tables["s", "t"].rows) for b in [*cut, rest]) == 11


# -- C and Python fold alike ---------------------------------------------------------------

KEY = st.sampled_from([b"1", b"2", b"3", b"4"])
VALUE = st.one_of(st.binary(max_size=3), st.none(), st.just(UNCHANGED_TOAST))


@st.composite
def change_of(draw: st.DrawFn) -> tuple[Relation, ChangeSpec]:
    relation = draw(st.sampled_from([RELATION, RELATION, WIDER, PAIRS]))
    width = len(relation.columns)
    nkeys = 2 if relation is PAIRS else 1
    key = tuple(draw(KEY) for _ in range(nkeys))
    rest = tuple(draw(VALUE) for _ in range(width - nkeys))
    op = draw(st.sampled_from([Op.INSERT, Op.UPDATE, Op.UPDATE, Op.DELETE, Op.TRUNCATE]))
    if op is Op.TRUNCATE and draw(st.integers(0, 3)):
        op = Op.INSERT  # truncates are rare
    if op is Op.INSERT:
        return relation, (op, key + tuple(v for v in rest if v is not UNCHANGED_TOAST)
                          + (None,) * sum(v is UNCHANGED_TOAST for v in rest), None)  # fmt: skip
    if op is Op.DELETE:
        full = draw(st.booleans())  # REPLICA IDENTITY FULL sends the whole old row
        return relation, (op, None, key + (rest if full else (None,) * len(rest)))
    if op is Op.UPDATE and draw(st.integers(0, 3)) == 0:
        old = tuple(draw(KEY) for _ in range(nkeys)) + (None,) * len(rest)
        return relation, (op, key + rest, old)  # a key change
    return relation, (op, key + rest, None) if op is Op.UPDATE else (op, None, None)


def summary(batches: list[Batch]) -> list[Any]:
    return [
        (
            b.changes, b.skipped, b.transactions, b.end_lsn, b.commit_times,
            {
                name: (t.columns, t.rows, t.truncate_version, t.op_counts)
                for name, t in b.tables.items()
            },
        )
        for b in batches
    ]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    transactions=st.lists(st.lists(change_of(), max_size=12), min_size=1, max_size=5),
    max_changes=st.none() | st.integers(1, 8),
    chunk=st.integers(1, 5),
    quarantine_pairs=st.booleans(),
)
def test_the_c_fold_gives_what_the_python_fold_gives(
    transactions: list[list[tuple[Relation, ChangeSpec]]],
    max_changes: int | None,
    chunk: int,
    quarantine_pairs: bool,
) -> None:
    assert native_fold() is not None, "cdc.apply._fold is not built: run `make install`"

    def resolver(relation: Relation) -> tuple[int, ...] | None:
        if relation.name == "pairs":
            return None if quarantine_pairs else (0, 1)
        return (0,)

    def fold(native: bool) -> list[Any]:
        builder = builder_of(resolver, max_changes, native=native)
        batches: list[Batch] = []
        for i, changes in enumerate(transactions):
            batches += builder.add(relation_txn(10 * (i + 1), changes, chunk))
        return summary([*batches, builder.build()])

    assert fold(native=True) == fold(native=False)


def test_records_the_c_fold_leaves_to_python_are_folded_in_order() -> None:
    resolver: KeyPositions = keys
    toasted: list[tuple[Relation, ChangeSpec]] = [(RELATION, (Op.INSERT, (b"1", b"a"), None)),
               (RELATION, (Op.UPDATE, (b"1", UNCHANGED_TOAST), None)),
               (RELATION, (Op.UPDATE, (b"1", b"b"), None)),
               (RELATION, (Op.UPDATE, (b"1", UNCHANGED_TOAST), None))]  # fmt: skip
    builder = builder_of(resolver, native=True)
    builder.add(relation_txn(3, toasted, chunk=10))
    rows = builder.build().tables["s", "t"].rows
    assert rows[(b"1",)] == RowImage((3 << 64) | 4, False, (b"1", b"b"))


def test_a_moved_row_notes_the_historic_rows_that_hold_its_unchanged_values(
    folding: Callable[..., BatchBuilder],
) -> None:
    """A swap through a temporary key, then a row moved onto a key whose values came from
    another key earlier in the batch: each candidate historic row, with the versions
    between which it holds the values."""
    builder = folding(lambda r: (0, 1))
    v = UNCHANGED_TOAST
    builder.add(relation_txn(20, [
        (PAIRS, (Op.UPDATE, (b"1", b"-1", v), (b"1", b"6", None))),
        (PAIRS, (Op.UPDATE, (b"1", b"6", v), (b"1", b"5", None))),
        (PAIRS, (Op.UPDATE, (b"1", b"5", v), (b"1", b"-1", None))),
    ]))  # fmt: skip
    builder.add(relation_txn(40, [
        (PAIRS, (Op.UPDATE, (b"1", b"2", v), (b"1", b"6", None))),
        (PAIRS, (Op.UPDATE, (b"1", b"7", b"new"), (b"1", b"5", None))),
    ]))  # fmt: skip
    table = builder.build().tables["s", "pairs"]
    swap, move = 20 << 64, 40 << 64
    assert table.fill_from[(b"1", b"2")] == (
        FillSource((b"1", b"2"), move | 1, NO_BOUND),  # a replay wrote the move already
        FillSource((b"1", b"6"), swap | 2, (move | 1) + 1),  # as the swap left it
        FillSource((b"1", b"5"), 0, (swap | 2) + 1),  # as the batch found it
    )
    assert (b"1", b"7") not in table.fill_from, "complete: nothing to fill"
    assert table.rows[(b"1", b"6")].deleted


def test_a_schema_change_inside_a_batch_widens_its_layout_by_name(
    folding: Callable[..., BatchBuilder],
) -> None:
    narrower = dataclasses.replace(WIDER, columns=(WIDER.columns[0], WIDER.columns[2]))  # v dropped
    builder = folding(keys)
    builder.add(relation_txn(10, [
        (RELATION, (Op.INSERT, (b"1", b"a"), None)),
        (WIDER, (Op.INSERT, (b"2", b"b", b"x"), None)),
        (narrower, (Op.INSERT, (b"3", b"y"), None)),
    ]))  # fmt: skip
    table = builder.build().tables["s", "t"]
    assert table.columns == ("id", "v", "w")
    assert [c.nullable for c in table.schema.columns] == [False, True, True]  # v: gone, nullable
    assert table.schema.primary_key == ("id",)
    assert {k: r.values for k, r in table.rows.items()} == {
        (b"1",): (b"1", b"a", None),
        (b"2",): (b"2", b"b", b"x"),
        (b"3",): (b"3", None, b"y"),
    }


def test_a_type_change_inside_a_batch_is_refused_and_a_table_set_aside_leaves_it() -> None:
    retyped = dataclasses.replace(
        RELATION, columns=(RELATION.columns[0], RelationColumn(False, "v", 20, -1))
    )
    with pytest.raises(CdcError, match=r"'v' of s\.t changed type") as refused:
        widen(schema_of(RELATION, (0,)), schema_of(retyped, (0,)))
    assert refused.value.kind is ErrorKind.TABLE_CHANGED and refused.value.table == ("s", "t")

    set_aside: set[str] = set()

    def key_positions(relation: Relation) -> tuple[int, ...] | None:
        if relation is WIDER:  # describing the changed table fails: it is quarantined
            set_aside.add(relation.name)
        return None if relation.name in set_aside else (0,)

    builder = builder_of(key_positions)
    builder.add(relation_txn(10, [
        (RELATION, (Op.INSERT, (b"1", b"a"), None)),
        (PAIRS, (Op.INSERT, (b"1", b"2", b"p"), None)),
        (WIDER, (Op.INSERT, (b"2", b"b", b"x"), None)),
        (RELATION, (Op.INSERT, (b"3", b"c"), None)),
    ]))  # fmt: skip
    batch = builder.build()
    assert list(batch.tables) == [("s", "pairs")]
    assert batch.skipped == 2


def test_a_widened_type_inside_a_batch_is_followed_and_another_sets_the_table_aside(
    folding: Callable[..., BatchBuilder],
) -> None:
    """int -> bigint: the rows before the change keep their texts, values of the new type;
    text -> bigint is not followed: the builder sets the table aside and goes on."""
    widened = dataclasses.replace(
        RELATION, columns=(RelationColumn(True, "id", 20, -1), RELATION.columns[1])
    )
    retyped = dataclasses.replace(
        RELATION, columns=(RELATION.columns[0], RelationColumn(False, "v", 20, -1))
    )
    set_aside: list[tuple[TableName, ErrorKind]] = []
    builder = folding(keys, set_aside=lambda name, exc: set_aside.append((name, exc.kind)))
    builder.add(relation_txn(10, [
        (RELATION, (Op.INSERT, (b"1", b"a"), None)),
        (widened, (Op.INSERT, (b"5000000000", b"b"), None)),
    ]))  # fmt: skip
    table = builder.build().tables["s", "t"]
    assert [(c.name, c.type_oid) for c in table.schema.columns] == [("id", 20), ("v", 25)]
    assert {k: r.values for k, r in table.rows.items()} == {
        (b"1",): (b"1", b"a"),
        (b"5000000000",): (b"5000000000", b"b"),
    }
    builder.add(relation_txn(20, [
        (RELATION, (Op.INSERT, (b"2", b"c"), None)),
        (retyped, (Op.INSERT, (b"3", b"7"), None)),
        (PAIRS, (Op.INSERT, (b"1", b"2", b"p"), None)),
    ]))  # fmt: skip
    assert set_aside == [(("s", "t"), ErrorKind.TABLE_CHANGED)]
    assert list(builder.build().tables) == [("s", "pairs")]


def test_columns_added_or_made_not_null_inside_a_batch_stay_nullable() -> None:
    """Rows from before the change hold NULL there: both targets must take them as NULL."""
    before = schema_of(RELATION, (0,))  # v nullable
    after = dataclasses.replace(
        schema_of(WIDER, (0,)),
        columns=tuple(
            dataclasses.replace(c, nullable=False) for c in schema_of(WIDER, (0,)).columns
        ),
    )  # v made NOT NULL, w added NOT NULL
    assert [c.nullable for c in widen(before, after).columns] == [False, True, True]
    with pytest.raises(CdcError, match=r"s\.pairs changed its key \(a, b\) -> \(a\)"):
        widen(schema_of(PAIRS, (0, 1)), schema_of(PAIRS, (0,)))
