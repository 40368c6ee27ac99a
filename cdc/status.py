"""The pipeline's recorded state: daemon state and last error, per-table state.

Kept in the historic database next to the targets (`_cdc_daemon`, and `_cdc_tables`
shared with backfill), so `cdc status` can tell an operator what happened even when the
daemon is not running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from cdc.chunks import TABLES_TABLE, state_ddl
from cdc.settings import redact_url

DAEMON_TABLE = "_cdc_daemon"


@dataclass(frozen=True)
class DaemonState:
    slot: str
    state: str
    last_error: str | None
    updated_at: datetime


@dataclass(frozen=True)
class TableState:
    table: str
    state: str
    error: str | None
    updated_at: datetime


def _ident(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def ensure(conn: psycopg.Connection[Any], schema: str) -> None:
    for statement in state_ddl(schema):
        conn.execute(statement)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, state text NOT NULL, "
            "last_error text, updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(_ident(schema, DAEMON_TABLE))
    )


def record_daemon(dsn: str, schema: str, slot: str, state: str, error: str | None = None) -> None:
    """Best effort: the record must never be why the daemon fails."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            ensure(conn, schema)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (slot, state, last_error) VALUES (%s, %s, %s) "
                    "ON CONFLICT (slot) DO UPDATE SET state = excluded.state, "
                    "last_error = coalesce(excluded.last_error, {}.last_error), "
                    "updated_at = now()"
                ).format(_ident(schema, DAEMON_TABLE), sql.Identifier(DAEMON_TABLE)),
                (slot, state, redact_url(error) if error else None),
            )
    except psycopg.Error:
        pass


def record_table(dsn: str, schema: str, table: str, state: str, error: str | None) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            ensure(conn, schema)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (table_name, state, error) VALUES (%s, %s, %s) "
                    "ON CONFLICT (table_name) DO UPDATE SET state = excluded.state, "
                    "error = excluded.error, updated_at = now()"
                ).format(_ident(schema, TABLES_TABLE)),
                (table, state, error),
            )
    except psycopg.Error:
        pass


def read(conn: psycopg.Connection[Any], schema: str, slot: str) -> tuple[
    DaemonState | None, list[TableState]
]:  # fmt: skip
    ensure(conn, schema)
    row = conn.execute(
        sql.SQL("SELECT slot, state, last_error, updated_at FROM {} WHERE slot = %s").format(
            _ident(schema, DAEMON_TABLE)
        ),
        (slot,),
    ).fetchone()
    tables = conn.execute(
        sql.SQL("SELECT table_name, state, error, updated_at FROM {} ORDER BY 1").format(
            _ident(schema, TABLES_TABLE)
        )
    ).fetchall()
    return (
        DaemonState(*row) if row else None,
        [TableState(*t) for t in tables],
    )
