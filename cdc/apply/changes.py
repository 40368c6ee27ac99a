"""Domain events: committed transactions of row changes, as sinks see them.

`cdc.apply.assembler` buffers a transaction's wire messages (`cdc.protocol`) as received, in
`RecordChunk`s; those turn them into `Change`s, in one place. A `Change` refers to the
`Relation` (table shape) that was current when it was received, carries its 1-based
`ordinal` inside the transaction, and keeps tuple values as the text bytes Postgres sent
(`None` for NULL, `UNCHANGED_TOAST` for a TOASTed value not resent). The batcher folds
the records of a chunk without making a `Change` of each when its C part is built.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from cdc.protocol import Delete, Insert, Relation, Truncate, TupleData, Update
from cdc.protocol.lsn import Lsn
from cdc.versions import version_of


class Op(enum.Enum):
    INSERT = "I"
    UPDATE = "U"
    DELETE = "D"
    TRUNCATE = "T"

    # Members are singletons: identity hashing (in C) instead of Enum's hash of the name,
    # since the batcher counts changes per (table, op).
    __hash__ = object.__hash__


class Change(NamedTuple):
    """One row change. `old` is the key (or, with REPLICA IDENTITY FULL, the whole old row)
    for updates that changed the key or identity-full tables, and for deletes."""

    op: Op
    relation: Relation
    ordinal: int
    new: TupleData | None
    old: TupleData | None


# A received message of a transaction: (subtransaction xid, index of its relation in the
# chunk's `relations`, the Insert, Update, Delete or Truncate message).
Record = tuple[int | None, int, Any]

# `Change((op, relation, ordinal, new, old))` without the Python-level `__new__` of a
# NamedTuple: one is built per change.
_change = functools.partial(tuple.__new__, Change)


class RecordChunk(NamedTuple):
    """Consecutive records of one transaction; `records[i]` has ordinal `first_ordinal + i`."""

    relations: list[Relation]
    first_ordinal: int
    records: list[Record]

    def changes(self, start: int = 0, stop: int | None = None) -> list[Change]:
        """The changes of `records[start:stop]` (one comprehension: cheaper than a
        generator step per change)."""
        insert, update, delete = Op.INSERT, Op.UPDATE, Op.DELETE
        relations, change = self.relations, _change
        return [
            change((insert, relations[index], ordinal, message.new, None))
            if (kind := type(message)) is Insert
            else change((update, relations[index], ordinal, message.new, message.old))
            if kind is Update
            else change((delete, relations[index], ordinal, None, message.old))
            if kind is Delete
            else _truncate(message, relations[index], ordinal)
            for ordinal, (_, index, message) in enumerate(
                self.records[start:stop], start=self.first_ordinal + start
            )
        ]


def _truncate(message: Truncate, relation: Relation, ordinal: int) -> Change:
    assert isinstance(message, Truncate), message
    return Change(Op.TRUNCATE, relation, ordinal, None, None)


@dataclass(slots=True)
class Transaction:
    """A committed transaction. `chunks()` and `changes()` may be called more than once; a
    spilled transaction reads its records back from disk each time."""

    xid: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: int
    _chunks: Callable[[], Iterator[RecordChunk]]
    _close: Callable[[], None]

    def chunks(self) -> Iterator[RecordChunk]:
        return self._chunks()

    def changes(self) -> Iterator[Change]:
        for chunk in self._chunks():
            yield from chunk.changes()

    def version(self, ordinal: int) -> int:
        """The `_version` of the change at `ordinal` (`cdc.versions`)."""
        return version_of(self.commit_lsn, ordinal)

    def close(self) -> None:
        """Release the buffered changes (and the spill file, if any) once applied."""
        self._close()
