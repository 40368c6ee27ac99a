"""Exported snapshots: a consistent view of the source at a known LSN, for copying tables.

`exported_snapshot` creates a logical slot with an exported snapshot on a replication
connection and keeps that connection open (idle) while the caller copies: other
connections import the snapshot with `SET TRANSACTION SNAPSHOT`. Rows read in it are
versioned `consistent_point << 64`: every change committed after it has a higher version,
every change before it is already in the rows (DESIGN.md invariant 3). With
`temporary=True` the slot exists only for the copy (backfill while the daemon streams).

A lasting slot is created again when a relation was rewritten or created while Postgres
built its snapshot (`raced_relations`): a transaction already running when the slot
started building, whose *subtransaction* changed the catalog (a TRUNCATE in a savepoint),
is left out of the slot's catalog snapshot if it commits before the slot's first
consistent point (snapbuild.c ignores the commit of a transaction older than the
BUILDING_SNAPSHOT point, subtransactions included). Decoding a later change to such a
table then fails with "could not map filenode ... to relation OID" at every restart: the
slot is unusable for good.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import CdcError, ErrorKind
from cdc.ops.logs import get_logger
from cdc.protocol.lsn import Lsn
from cdc.stream.session import canonical_dsn, replication_connect
from cdc.stream.slotcheck import PendingCheck
from cdc.stream.slots import FAILOVER_VERSION, PLUGIN
from cdc.stream.slotwait import waits_noticed
from cdc.stream.walsender import classify
from cdc.versions import snapshot_version

SNAPSHOT_OPTION_VERSION = 150000  # `(SNAPSHOT 'export')` replaces EXPORT_SNAPSHOT
SLOT_ATTEMPTS = 10  # creations of a lasting slot that raced a rewrite, before giving up

# The next transaction id (without epoch): every transaction that starts later has an id
# at or above it.
NEXT_XID_SQL = "SELECT txid_snapshot_xmax(txid_current_snapshot()) % 4294967296"
# Relations whose decoded changes are looked up by filenode (tables, their TOAST tables,
# materialized views) whose catalog row was written by a transaction with an id at or
# after the one given (xids compare modulo 2^32; 0-2 are the special ones).
RACED_RELATIONS_SQL = """
SELECT c.oid::regclass::text FROM pg_class c
WHERE c.relkind IN ('r', 't', 'm') AND c.relpersistence <> 't'
  AND c.xmin::text::bigint > 2
  AND ((c.xmin::text::bigint - %(xid)s) %% 4294967296 + 4294967296) %% 4294967296
      < 2147483648
ORDER BY 1
"""


@dataclass(frozen=True)
class Snapshot:
    name: str
    lsn: Lsn

    @property
    def version(self) -> int:
        """The `_version` of every row read in this snapshot."""
        return snapshot_version(self.lsn)


def create_slot_sql(slot: str, temporary: bool, server_version: int) -> sql.Composed:
    """The replication command that creates `slot` and exports its snapshot. From Postgres
    17 a lasting slot is a failover slot: synchronised to standbys, so the pipeline
    survives a failover of the source."""
    temp = sql.SQL(" TEMPORARY") if temporary else sql.SQL("")
    options: sql.Composable
    if server_version < SNAPSHOT_OPTION_VERSION:
        options = sql.SQL("EXPORT_SNAPSHOT")
    else:
        parts = [sql.SQL("SNAPSHOT 'export'")]
        if server_version >= FAILOVER_VERSION and not temporary:
            parts.append(sql.SQL("FAILOVER true"))
        options = sql.SQL("({})").format(sql.SQL(", ").join(parts))
    return sql.SQL("CREATE_REPLICATION_SLOT {}{} LOGICAL {} {}").format(
        sql.Identifier(slot), temp, sql.Identifier(PLUGIN), options
    )


# Takes a fresh snapshot to copy at (as `exported_snapshot` with a temporary slot does).
SnapshotSource = Callable[[], AbstractContextManager["Snapshot"]]


@contextmanager
def exported_snapshot(
    dsn: str, slot: str | None = None, check: PendingCheck | None = None
) -> Iterator[Snapshot]:
    """A snapshot exported by creating `slot` (kept afterwards), or a temporary slot.
    `check`: where the lasting slot's race check is recorded until it passed."""
    temporary = slot is None
    name = slot or f"cdc_snapshot_{uuid.uuid4().hex[:12]}"
    try:
        conn = replication_connect(dsn)
    except psycopg.Error as exc:
        raise classify(exc, "cannot open a replication connection for a snapshot") from exc
    with conn:
        for attempt in range(1, SLOT_ATTEMPTS + 1):
            try:
                if check is not None:
                    check.prepare()
                before = None if temporary else _query(dsn, NEXT_XID_SQL)[0][0]
                if before is not None and check is not None:
                    check.record(int(before))
                with waits_noticed(dsn, name):
                    row: Any = conn.execute(
                        create_slot_sql(name, temporary, conn.info.server_version)
                    ).fetchone()
            except psycopg.Error as exc:
                raise classify(
                    exc, f"cannot create slot {name!r} with an exported snapshot"
                ) from exc
            if row is None or row[2] is None:
                raise CdcError(ErrorKind.SOURCE_CONNECTION, f"slot {name!r} exported no snapshot")
            # Only a lasting slot is decoded; a temporary one's snapshot is not affected.
            raced = [] if before is None else raced_relations(dsn, int(before))
            if not raced:
                if check is not None:
                    check.clear()
                break
            get_logger(slot=name).warning(
                "slot_creation_raced", relations=raced[:10], attempt=attempt,
                hint="relations were rewritten or created while the slot was being "
                "created; Postgres may be unable to decode their later changes, so the "
                "slot is made again" if attempt < SLOT_ATTEMPTS else "giving up: keeping "
                "the slot (if replication fails with 'could not map filenode', run "
                "`cdc slot recreate` then `cdc backfill --replace`)",
            )  # fmt: skip
            if attempt == SLOT_ATTEMPTS:
                if check is not None:
                    check.clear()
                break
            try:
                conn.execute(sql.SQL("DROP_REPLICATION_SLOT {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                raise classify(exc, f"cannot drop slot {name!r} to create it again") from exc
        yield Snapshot(name=row[2], lsn=Lsn.parse(row[1]))


def raced_relations(dsn: str, xid: int) -> list[str]:
    """Relations decoded by filenode whose catalog row a transaction with id `xid` or
    later wrote (created, truncated, rewritten, altered): checked after creating a slot,
    with `xid` the next transaction id from just before."""
    return [r[0] for r in _query(dsn, RACED_RELATIONS_SQL, {"xid": xid})]


def _query(dsn: str, query: str, params: dict[str, Any] | None = None) -> list[Any]:
    try:
        with psycopg.connect(canonical_dsn(dsn), autocommit=True) as conn:
            return conn.execute(query, params).fetchall()
    except psycopg.Error as exc:
        raise classify(exc, "cannot check the relations changed while creating a slot") from exc


def import_snapshot(
    conn: psycopg.Connection[Any], snapshot: Snapshot, read_only: bool = True
) -> None:
    """Start a REPEATABLE READ transaction on `conn` that sees exactly `snapshot` (one that
    may write, too, with `read_only=False`)."""
    conn.execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ" + (" READ ONLY" if read_only else " READ WRITE")
    )
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot.name)))
