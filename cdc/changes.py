"""Domain events: committed transactions of row changes, as sinks see them.

Wire messages (`cdc.pgoutput`) become these in one place, `cdc.assembler`. A `Change`
refers to the `Relation` (table shape) that was current when it was received, carries its
1-based `ordinal` inside the transaction, and keeps tuple values as the text bytes
Postgres sent (`None` for NULL, `UNCHANGED_TOAST` for a TOASTed value not resent).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from cdc.lsn import Lsn
from cdc.pgoutput import Relation, TupleData


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


@dataclass(slots=True)
class Transaction:
    """A committed transaction. `changes()` may be called more than once; a spilled
    transaction reads its changes back from disk each time."""

    xid: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: int
    _changes: Callable[[], Iterator[Change]]
    _close: Callable[[], None]

    def changes(self) -> Iterator[Change]:
        return self._changes()

    def version(self, ordinal: int) -> int:
        """The `_version` of the change at `ordinal`: (commit LSN << 64) | ordinal."""
        return (self.commit_lsn << 64) | ordinal

    def close(self) -> None:
        """Release the buffered changes (and the spill file, if any) once applied."""
        self._close()
