"""The pipeline's recorded state: daemon state and last error, per-table state, what the
drift monitor found, and how fresh the targets are.

Kept in the historic database next to the targets (`_cdc_daemon`, `_cdc_tables` shared
with backfill, `_cdc_monitor`), so `cdc status` can tell an operator what happened even
when the daemon is not running. `ensure` creates what is missing and adds the columns a
historic schema made by an older release lacks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from cdc.load.chunks import TABLES_TABLE, state_ddl
from cdc.ops.settings import redact_url
from cdc.states import DaemonState, TableState
from cdc.stream.eligibility import Exclusion, Shape, SourceTable

DAEMON_TABLE = "_cdc_daemon"
MONITOR_TABLE = "_cdc_monitor"
# The source table (OID, and its `Shape` as JSON) each followed name stood for.
FOLLOWED_TABLE = "_cdc_followed"
# Columns added to existing tables since they were first made: (table, column, type).
_ADDED_COLUMNS: Final = (
    (DAEMON_TABLE, "held_through", "timestamptz"),
    (FOLLOWED_TABLE, "shape", "text"),
)


@dataclass(frozen=True)
class DaemonRecord:
    slot: str
    state: str  # a `DaemonState`, as recorded
    last_error: str | None
    updated_at: datetime
    # The commit time of the newest source transaction both targets hold (None: unknown);
    # the freshness is the time since.
    held_through: datetime | None = None


@dataclass(frozen=True)
class TableCheck:
    """A table's last completed drift check: when, and the rows differing per target
    (None: the target was not compared)."""

    table: str
    checked_at: datetime
    historic_drift: int | None
    clickhouse_drift: int | None


@dataclass(frozen=True)
class TableRecord:
    table: str
    state: str  # a `TableState`, as recorded or shown
    error: str | None
    updated_at: datetime | None  # None: nothing recorded yet


# What `overview` shows for a published table, by its recorded state.
_PUBLISHED_STATES: dict[str, TableState] = {TableState.COPYING: TableState.LOADING,
                     TableState.REPLACING: TableState.LOADING,
                     TableState.READY: TableState.STREAMING,
                     TableState.FAILED: TableState.FAILED,
                     TableState.QUARANTINED: TableState.QUARANTINED}  # fmt: skip


def overview(
    tables: Sequence[SourceTable],
    exclusions: Mapping[str, Exclusion],
    published: Collection[str],
    recorded: Sequence[TableRecord],
) -> list[TableRecord]:
    """Every table of the source schema with its state (streaming, loading, excluded,
    quarantined, failed; `not published`: taken out by hand; `new`: the running daemon
    picks it up at its next look at the schema), then the recorded tables that are gone
    from it (dropped, unless recorded quarantined or failed)."""
    by_name = {t.table: t for t in recorded}
    shown: list[TableRecord] = []
    for table in tables:
        was = by_name.get(table.name)
        since = was.updated_at if was is not None else None
        why = exclusions.get(table.name)
        if why is not None:
            excluded_since = since if was and was.state == TableState.EXCLUDED else None
            fix = f"{why.reason}; fix: {why.fix}"
            shown.append(TableRecord(table.name, TableState.EXCLUDED, fix, excluded_since))
        elif was is not None and was.state == TableState.QUARANTINED:
            shown.append(was)
        elif table.name in published:
            state = TableState.STREAMING
            if was is not None:
                state = _PUBLISHED_STATES.get(was.state, TableState.STREAMING)
            shown.append(TableRecord(table.name, state, was.error if was else None, since))
        else:
            gone = was is not None and was.state not in (TableState.EXCLUDED, TableState.DROPPED)
            state = TableState.NOT_PUBLISHED if gone else TableState.NEW
            shown.append(TableRecord(table.name, state, None, since))
    present = {t.name for t in tables}
    for was in recorded:
        if was.table not in present:
            # what the operator must act on
            kept = was.state in (TableState.QUARANTINED, TableState.FAILED)
            shown.append(was if kept else TableRecord(
                was.table, TableState.DROPPED, was.error or "not in the source schema",
                was.updated_at
            ))  # fmt: skip
    return shown


def _ident(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def ensure(conn: psycopg.Connection[Any], schema: str) -> None:
    for statement in state_ddl(schema):
        conn.execute(statement)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, state text NOT NULL, "
            "last_error text, updated_at timestamptz NOT NULL DEFAULT now(), "
            "held_through timestamptz)"
        ).format(_ident(schema, DAEMON_TABLE))
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, "
            "checked_at timestamptz NOT NULL, historic_drift bigint, clickhouse_drift bigint)"
        ).format(_ident(schema, MONITOR_TABLE))
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, "
            "source_oid bigint NOT NULL, shape text)"
        ).format(_ident(schema, FOLLOWED_TABLE))
    )
    for table, column, type_name in _ADDED_COLUMNS:
        present = conn.execute(
            "SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s AND column_name = %s)",
            (schema, table, column),
        ).fetchone()
        if present is not None and not present[0]:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    _ident(schema, table), sql.Identifier(column), sql.SQL(type_name)
                )
            )


def record_daemon(
    dsn: str, schema: str, slot: str, state: DaemonState, error: str | None = None
) -> None:
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


def record_table(dsn: str, schema: str, table: str, state: TableState, error: str | None) -> None:
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


def record_held_through(
    conn: psycopg.Connection[Any], schema: str, slot: str, held_through: datetime
) -> None:
    """Record the commit time of the newest source transaction both targets hold."""
    conn.execute(
        sql.SQL("UPDATE {} SET held_through = %s WHERE slot = %s").format(
            _ident(schema, DAEMON_TABLE)
        ),
        (held_through, slot),
    )


def record_check(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    historic_drift: int | None,
    clickhouse_drift: int | None,
) -> None:
    """Record a table's completed drift check, now."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, checked_at, historic_drift, clickhouse_drift) "
            "VALUES (%s, now(), %s, %s) ON CONFLICT (table_name) DO UPDATE SET "
            "checked_at = excluded.checked_at, historic_drift = excluded.historic_drift, "
            "clickhouse_drift = excluded.clickhouse_drift"
        ).format(_ident(schema, MONITOR_TABLE)),
        (table, historic_drift, clickhouse_drift),
    )


def read(conn: psycopg.Connection[Any], schema: str, slot: str) -> tuple[
    DaemonRecord | None, list[TableRecord]
]:  # fmt: skip
    ensure(conn, schema)
    row = conn.execute(
        sql.SQL(
            "SELECT slot, state, last_error, updated_at, held_through FROM {} WHERE slot = %s"
        ).format(_ident(schema, DAEMON_TABLE)),
        (slot,),
    ).fetchone()
    tables = conn.execute(
        sql.SQL("SELECT table_name, state, error, updated_at FROM {} ORDER BY 1").format(
            _ident(schema, TABLES_TABLE)
        )
    ).fetchall()
    return (
        DaemonRecord(*row) if row else None,
        [TableRecord(*t) for t in tables],
    )


def read_checks(conn: psycopg.Connection[Any], schema: str) -> dict[str, TableCheck]:
    """The last drift check of each table the monitor has checked, by table name."""
    ensure(conn, schema)
    rows = conn.execute(
        sql.SQL("SELECT table_name, checked_at, historic_drift, clickhouse_drift FROM {}").format(
            _ident(schema, MONITOR_TABLE)
        )
    ).fetchall()
    return {row[0]: TableCheck(*row) for row in rows}


def read_table(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> tuple[str | None, Shape | None]:
    """`table`'s recorded state, and the shape the schema follower recorded for it (the
    state tables exist: `ensure`)."""
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT state FROM {} WHERE table_name = %s), "
            "(SELECT shape FROM {} WHERE table_name = %s)"
        ).format(_ident(schema, TABLES_TABLE), _ident(schema, FOLLOWED_TABLE)),
        (table, table),
    ).fetchone()
    state, shape = row if row is not None else (None, None)
    return state, Shape.from_json(shape) if shape else None


def read_set_aside(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """The tables recorded as set aside (quarantined), with why; read only (a role that
    may only read historic, none recorded yet: none)."""
    try:
        rows = conn.execute(
            sql.SQL("SELECT table_name, coalesce(error, '') FROM {} WHERE state = %s").format(
                _ident(schema, TABLES_TABLE)
            ),
            (TableState.QUARANTINED,),
        ).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        return {}
    return dict(rows)
