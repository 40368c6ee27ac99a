"""The contract every sink honours, and what it is given to apply.

A sink applies a `Batch` (the last image of each changed row, versioned) to one target.

Contract:
- **Durable on return.** When `apply` returns, the batch survives a crash of this process
  and of the target; only then may the stream's flush LSN pass the batch's end.
- **Idempotent.** Applying the same batch again leaves the target unchanged.
- **Order-free.** Applying batches in any order gives the same final state: a row is
  replaced only by a higher `_version`; a truncation removes only lower versions.
- **At-least-once input.** After a crash the stream replays batches already applied.
- **Creates what is missing.** Target tables, views and columns added at the source are
  created before the rows that use them; columns dropped at the source stay, nullable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from cdc.batch import Batch, TableName
from cdc.schema import TableSchema

# For each table in a batch: its schema laid out exactly as the batch's row values.
Layouts = Mapping[TableName, TableSchema]


class Sink(Protocol):
    name: str

    def prepare(self, tables: Sequence[TableSchema]) -> None:
        """Create the targets of `tables` that are missing (idempotent)."""
        ...

    def apply(self, batch: Batch, layouts: Layouts) -> None:
        """Apply `batch`; durable on return (see the module docstring for the contract)."""
        ...

    def apply_copy(self, layout: TableSchema, data: bytes, version: int) -> None:
        """Apply live rows given as Postgres COPY text (the layout's columns, then
        `_version`, equal to `version` in every row); the same contract as `apply`."""
        ...

    def close(self) -> None: ...
