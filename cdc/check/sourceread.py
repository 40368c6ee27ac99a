"""A key range's source rows, read once inside a snapshot and kept: pure, no database.

The drift monitor reads a range's keys and row hashes in a snapshot and ends the snapshot
before it waits for the daemon to pass it (a snapshot kept open holds back the source's
pruning of dead rows, and the wait lasts as long as the daemon's lag). Everything the
comparison needs from the source afterwards comes from here: the fingerprint of any run
of consecutive keys (prefix sums), the pieces a differing run splits into, and the rows of
a leaf to compare key by key.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any, NamedTuple

from cdc.check.drift import Ident, SourceRow
from cdc.check.keyrange import LEAF_ROWS, Key, KeyRange, piece_rows


class Run(NamedTuple):
    """Source rows `start` to `stop` (exclusive, in key order) and the key range they
    cover: a range holds no source row but these."""

    range: KeyRange
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class SourceRead:
    """The source rows of `range`, in key order (the shared order of `cdc.check.keyrange`),
    as read: each row the `width` canonical texts of its key, the key's `width` output
    texts, its hash and its hash as ClickHouse holds it. Rows are kept as read (no object
    per row until a leaf is compared: a range holds up to `MAX_STEP_ROWS`)."""

    def __init__(self, range_: KeyRange, width: int, rows: Sequence[tuple[Any, ...]]) -> None:
        self.range = range_
        self.width = width
        self.rows = rows
        self._positions: dict[Ident, int] | None = None  # made when first needed
        self._sums = [list(accumulate((r[i] for r in rows), initial=0)) for i in (2 * width, -1)]

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, index: int) -> Key:
        return tuple(self.rows[index][self.width : 2 * self.width])

    def whole(self) -> Run:
        return Run(self.range, 0, len(self.rows))

    def aggregate(self, run: Run) -> tuple[int, int, int]:
        """(rows, hash sum of the rows as they are, hash sum as ClickHouse holds them): the
        fingerprint `cdc.check.stores.TableStores.source_aggregate` reads."""
        exact, held = self._sums
        return (
            run.rows,
            exact[run.stop] - exact[run.start],
            held[run.stop] - held[run.start],
        )

    def aggregate_without(self, run: Run, idents: Sequence[Ident], which: int) -> tuple[int, int]:
        """(rows, hash sum) of `run` without the rows of `idents`; `which`: 1 for the hash of
        the rows as they are, 2 for the hash as ClickHouse holds them."""
        aggregate = self.aggregate(run)
        rows, total = aggregate[0], aggregate[which]
        if idents:
            index = self._index()
            column = 2 * self.width if which == 1 else -1
            for ident in idents:
                at = index.get(ident)
                if at is not None and run.start <= at < run.stop:
                    rows -= 1
                    total -= self.rows[at][column]
        return rows, total

    def _index(self) -> dict[Ident, int]:
        if self._positions is None:
            n = self.width
            self._positions = {tuple(r[:n]): i for i, r in enumerate(self.rows)}
        return self._positions

    def split(self, run: Run) -> list[Run]:
        """`run`'s pieces of `piece_rows` rows each; together they cover its range."""
        size = piece_rows(run.rows)
        pieces = []
        for i, start in enumerate(range(run.start, run.stop, size)):
            stop = min(start + size, run.stop)
            lower = run.range.lower if i == 0 else self.key(start - 1)
            upper = run.range.upper if stop == run.stop else self.key(stop - 1)
            pieces.append(Run(KeyRange(lower, upper, run.range.root), start, stop))
        return pieces

    def leaf_rows(self, run: Run) -> dict[Ident, SourceRow]:
        n = self.width
        return {
            tuple(r[:n]): SourceRow(tuple(r[n : 2 * n]), (r[2 * n], r[-1]))
            for r in self.rows[run.start : run.stop]
        }

    @staticmethod
    def is_leaf(run: Run) -> bool:
        return run.rows <= LEAF_ROWS
