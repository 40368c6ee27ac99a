"""The contract every sink honours, and what it is given to apply.

A sink applies a `Batch` (the last image of each changed row, versioned) to one target.

Contract:
- **Durable on return.** When `apply` returns, the batch survives a crash of this process
  and of the target; only then may the stream's flush LSN pass the batch's end.
- **Idempotent.** Applying the same batch again leaves the target unchanged.
- **Order-free.** Applying batches in any order gives the same final state: a row is
  replaced only by a higher `_version`; a truncation removes only lower versions.
- **At-least-once input.** After a crash the stream replays batches already applied.
- **Complete input.** `apply` is given a batch whose every value is decided: `complete`
  was called on the first sink (historic, which keeps the copy the stream's unchanged
  values are filled from) before any sink applies it. No sink depends on another.
- **Creates what is missing.** Target tables, views and columns added at the source are
  created before the rows that use them; columns dropped at the source stay, nullable.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cdc.apply.batch import Batch
from cdc.apply.unwritten import Unwritten
from cdc.schema import TableSchema


class CopyFormat(enum.Enum):
    """The forms a backfill reads a chunk's rows in."""

    TEXT = "text"  # COPY text: the layout's columns, then `_version`
    BINARY = "binary"  # binary COPY: the layout's columns only


@dataclass(frozen=True)
class CopiedRows:
    """A chunk's live rows, as one source COPY wrote them."""

    format: CopyFormat
    data: bytes
    rows: int


class Sink(Protocol):
    name: str

    def prepare(self, tables: Sequence[TableSchema]) -> None:
        """Create the targets of `tables` that are missing (idempotent)."""
        ...

    def complete(self, batch: Batch, unwritten: Unwritten | None = None) -> None:
        """Fill the values the stream did not resend (unchanged TOAST, a tombstone's
        columns) into `batch` from the copy this sink keeps, or from the batches before it
        that `unwritten` holds (completed, not yet written to that copy), writing no row;
        a sink that keeps none does nothing."""
        ...

    def apply(self, batch: Batch) -> None:
        """Apply `batch`, which is complete; durable on return (see the module docstring
        for the contract)."""
        ...

    def copy_format(self, layout: TableSchema) -> CopyFormat:
        """The form of a chunk's rows this sink takes best for `layout`."""
        ...

    def apply_copy(
        self, layout: TableSchema, copies: Sequence[CopiedRows], version: int
    ) -> list[int]:
        """Apply live rows straight from source COPYs, all at `version`, in one write; the
        same contract as `apply`. Returns the positions of the copies this sink did not take
        (their form, or a value it refuses), of which nothing is written: the caller gives
        those rows parsed, to `apply`, which names a refused value."""
        ...

    def close(self) -> None: ...
