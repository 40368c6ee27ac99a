"""Assembling decoded messages into transactions: kinds, ordinals, relations, aborts."""

from __future__ import annotations

import pytest

from cdc.apply.assembler import Assembler
from cdc.apply.changes import Op, Transaction
from cdc.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from cdc.protocol.lsn import Lsn
from cdc.protocol.tags import ReplicaIdentity, TupleMarker

pytestmark = pytest.mark.unit


def relation(oid: int, name: str) -> Relation:
    columns = (RelationColumn(True, "id", 23, -1), RelationColumn(False, "v", 25, -1))
    return Relation(None, oid, "s", name, ReplicaIdentity.DEFAULT, columns)


def assemble(messages: list[Message], memory_budget: int = 1 << 20) -> Transaction:
    assembler = Assembler(memory_budget)
    events = [assembler.feed(m, 100) for m in messages]
    done = [e for e in events if isinstance(e, Transaction)]
    assert len(done) == 1 and events[-1] is done[0]
    return done[0]


def summary(txn: Transaction) -> list[tuple[Op, str, int]]:
    return [(c.op, c.relation.name, c.ordinal) for c in txn.changes()]


ROWS: list[Message] = [
    Insert(None, 1, (b"1", b"a")),
    Update(None, 1, None, None, (b"1", b"b")),
    Delete(None, 1, TupleMarker.KEY, (b"1", None)),
    Truncate(None, False, False, (1,)),
    Insert(None, 1, (b"2", b"c")),
]
KINDS = [Op.INSERT, Op.UPDATE, Op.DELETE, Op.TRUNCATE, Op.INSERT]


@pytest.mark.parametrize("budget", [1 << 20, 1], ids=["in memory", "spilled"])
def test_every_kind_of_change_in_order_with_its_ordinal(budget: int) -> None:
    txn = assemble(
        [relation(1, "t"), Begin(Lsn(90), 0, 7), *ROWS, Commit(0, Lsn(90), Lsn(100), 0)], budget
    )
    assert summary(txn) == [(op, "t", i) for i, op in enumerate(KINDS, start=1)]
    assert summary(txn) == summary(txn), "changes() can be read again"
    assert [c.new for c in txn.changes()][:2] == [(b"1", b"a"), (b"1", b"b")]
    txn.close()


def test_changes_of_several_relations_keep_theirs() -> None:
    txn = assemble([
        relation(1, "a"), relation(2, "b"), Begin(Lsn(90), 0, 7),
        Insert(None, 1, (b"1", b"x")), Insert(None, 2, (b"1", b"y")),
        Truncate(None, False, False, (2,)),
        Commit(0, Lsn(90), Lsn(100), 0),
    ])  # fmt: skip
    assert summary(txn) == [(Op.INSERT, "a", 1), (Op.INSERT, "b", 2), (Op.TRUNCATE, "b", 3)]


def test_an_aborted_subtransaction_is_left_out_of_a_streamed_one() -> None:
    txn = assemble([
        relation(1, "t"), StreamStart(7, True),
        Insert(7, 1, (b"1", b"kept")), Insert(8, 1, (b"2", b"aborted")),
        StreamStop(), StreamAbort(7, 8, None, None),
        StreamCommit(7, 0, Lsn(90), Lsn(100), 0),
    ])  # fmt: skip
    assert summary(txn) == [(Op.INSERT, "t", 1)]
