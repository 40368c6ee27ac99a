"""Checks of the source Postgres before replication starts, each with an actionable message."""

from __future__ import annotations

from typing import Any

import psycopg

from cdc.errors import CdcError, ErrorKind


def check_wal_level(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SHOW wal_level").fetchone()
    level = row[0] if row else "unknown"
    if level != "logical":
        raise CdcError(
            ErrorKind.SETUP,
            f"wal_level is '{level}' but logical replication needs 'logical': run "
            "`ALTER SYSTEM SET wal_level = logical` and restart PostgreSQL",
        )
