"""Exported snapshots: a consistent view of the source at a known LSN, for copying tables.

`exported_snapshot` creates a logical slot with an exported snapshot on a replication
connection and keeps that connection open (idle) while the caller copies: other
connections import the snapshot with `SET TRANSACTION SNAPSHOT`. Rows read in it are
versioned `consistent_point << 64`: every change committed after it has a higher version,
every change before it is already in the rows (DESIGN.md invariant 3). With
`temporary=True` the slot exists only for the copy (backfill while the daemon streams).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import CdcError, ErrorKind
from cdc.lsn import Lsn
from cdc.slots import PLUGIN
from cdc.stream import canonical_dsn, classify


@dataclass(frozen=True)
class Snapshot:
    name: str
    lsn: Lsn

    @property
    def version(self) -> int:
        """The `_version` of every row read in this snapshot."""
        return self.lsn << 64


def create_slot_sql(slot: str, temporary: bool, server_version: int) -> sql.Composed:
    temp = sql.SQL(" TEMPORARY") if temporary else sql.SQL("")
    export = (
        sql.SQL("(SNAPSHOT 'export')") if server_version >= 150000 else sql.SQL("EXPORT_SNAPSHOT")
    )
    return sql.SQL("CREATE_REPLICATION_SLOT {}{} LOGICAL {} {}").format(
        sql.Identifier(slot), temp, sql.Identifier(PLUGIN), export
    )


@contextmanager
def exported_snapshot(dsn: str, slot: str | None = None) -> Iterator[Snapshot]:
    """A snapshot exported by creating `slot` (kept afterwards), or a temporary slot."""
    temporary = slot is None
    name = slot or f"cdc_snapshot_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect(canonical_dsn(dsn), replication="database", autocommit=True)
    except psycopg.Error as exc:
        raise classify(exc, "cannot open a replication connection for a snapshot") from exc
    with conn:
        try:
            row: Any = conn.execute(
                create_slot_sql(name, temporary, conn.info.server_version)
            ).fetchone()
        except psycopg.Error as exc:
            raise classify(exc, f"cannot create slot {name!r} with an exported snapshot") from exc
        if row is None or row[2] is None:
            raise CdcError(ErrorKind.SOURCE_CONNECTION, f"slot {name!r} exported no snapshot")
        yield Snapshot(name=row[2], lsn=Lsn.parse(row[1]))


def import_snapshot(
    conn: psycopg.Connection[Any], snapshot: Snapshot, read_only: bool = True
) -> None:
    """Start a REPEATABLE READ transaction on `conn` that sees exactly `snapshot` (one that
    may write, too, with `read_only=False`)."""
    conn.execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ" + (" READ ONLY" if read_only else " READ WRITE")
    )
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot.name)))
