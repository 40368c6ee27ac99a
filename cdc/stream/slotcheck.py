"""A lasting slot's creation, checked for a race even across a crash.

`exported_snapshot` checks a new slot for relations rewritten while Postgres built it
(`cdc.stream.snapshot.raced_relations`), with the next transaction id read just before
creating it. A daemon killed between the two would leave a slot nobody checked: so the
id is recorded in the historic database before the slot is made, and cleared once the
check passed. At its next start the daemon finds the record and checks the slot then.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cdc.ops import status
from cdc.stream.session import canonical_dsn

CHECKS_TABLE = "_cdc_slot_checks"


class PendingCheck:
    """The recorded check of one slot, in `schema` of the database `dsn` names."""

    def __init__(self, dsn: str, schema: str, slot: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.slot = slot

    def _table(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(CHECKS_TABLE))

    def prepare(self) -> None:
        """Make the checks' table and the daemon's state tables (which `cdc status` makes
        if missing), before the next transaction id is read: made while the slot is
        created, they would be taken for relations created meanwhile (the historic schema
        is often in the source database), and the slot made again for nothing."""
        self._run(None, ())
        with psycopg.connect(canonical_dsn(self.dsn), autocommit=True) as conn:
            status.ensure(conn, self.schema)

    def _run(self, query: sql.Composed | None, params: tuple[Any, ...]) -> list[Any]:
        """`query` on a session of its own, once the checks' table exists (None: only that)."""
        with psycopg.connect(canonical_dsn(self.dsn), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(self.schema)))  # fmt: skip
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} "
                    "(slot text PRIMARY KEY, next_xid bigint NOT NULL)"
                ).format(self._table())
            )
            if query is None:
                return []
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def record(self, next_xid: int) -> None:
        """Before creating the slot: the next transaction id."""
        self._run(
            sql.SQL(
                "INSERT INTO {} VALUES (%s, %s) ON CONFLICT (slot) DO UPDATE SET next_xid = "
                "excluded.next_xid"
            ).format(self._table()),
            (self.slot, next_xid),
        )

    def pending(self) -> int | None:
        """The recorded id if the slot's check has not passed yet."""
        rows = self._run(
            sql.SQL("SELECT next_xid FROM {} WHERE slot = %s").format(self._table()), (self.slot,)
        )
        return rows[0][0] if rows else None

    def clear(self) -> None:
        """The check passed (or the slot is gone)."""
        self._run(sql.SQL("DELETE FROM {} WHERE slot = %s").format(self._table()), (self.slot,))
