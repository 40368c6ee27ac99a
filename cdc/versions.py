"""A target row's `_version`: one formula orders every write to the targets.

A streamed change is versioned `(commit_lsn << 64) | ordinal` (its place in its
transaction), a row copied in a snapshot `snapshot_lsn << 64`: every change committed
after the snapshot is newer than the copy, every change before it older. A target row
is only ever replaced by a higher version, so replays and re-copies never go back in
time. (A copied row of an append-only log adds a number unique in its snapshot:
`cdc.load.chunks.log_version`.)
"""

from __future__ import annotations

from typing import Final

SHIFT: Final = 64  # the commit LSN is the version's high 64 bits


def version_of(commit_lsn: int, ordinal: int) -> int:
    """The version of the change at `ordinal` in the transaction committed at `commit_lsn`."""
    return (commit_lsn << SHIFT) | ordinal


def snapshot_version(lsn: int) -> int:
    """The version of every row read in the snapshot taken at `lsn`."""
    return lsn << SHIFT


def commit_lsn_of(version: int) -> int:
    """The commit LSN (or snapshot LSN) a version was made from."""
    return version >> SHIFT
