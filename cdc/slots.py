"""Replication slots and publications: create, drop, inspect (SQL built by pure functions).

A pipeline is one `pgoutput` slot plus one publication listing the source schema's tables.
The publication lists tables explicitly (not `FOR TABLES IN SCHEMA`), so adding a table
is a deliberate step (`cdc publication add-table`, then `cdc backfill`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import CdcError, ErrorKind
from cdc.lsn import Lsn

PLUGIN = "pgoutput"


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: Lsn | None
    confirmed_flush_lsn: Lsn | None
    wal_status: str | None
    safe_wal_size: int | None
    retained_bytes: int | None


SLOT_QUERY = """
SELECT slot_name, plugin, database, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text, wal_status, safe_wal_size,
       CASE WHEN restart_lsn IS NULL THEN NULL
            ELSE pg_wal_lsn_diff(
                CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                     ELSE pg_current_wal_lsn() END, restart_lsn)::bigint END
FROM pg_replication_slots
WHERE slot_type = 'logical' AND (%(name)s::text IS NULL OR slot_name = %(name)s)
ORDER BY slot_name
"""


def _lsn(text: str | None) -> Lsn | None:
    return Lsn.parse(text) if text else None


def list_slots(conn: psycopg.Connection[Any], name: str | None = None) -> list[SlotInfo]:
    rows = conn.execute(SLOT_QUERY, {"name": name}).fetchall()
    return [
        SlotInfo(r[0], r[1], r[2], r[3], r[4], _lsn(r[5]), _lsn(r[6]), r[7], r[8], r[9])
        for r in rows
    ]


def get_slot(conn: psycopg.Connection[Any], name: str) -> SlotInfo | None:
    found = list_slots(conn, name)
    return found[0] if found else None


SAFE_WAL_WARNING_BYTES = 1 << 30


def wal_status_warning(slot: SlotInfo) -> str | None:
    """What to tell the operator when Postgres may soon invalidate the slot, else None."""
    if slot.wal_status == "unreserved":
        return (
            "the slot's WAL is past max_slot_wal_keep_size and will be removed at the next "
            "checkpoint: the daemon must catch up now, or raise max_slot_wal_keep_size"
        )
    if slot.safe_wal_size is not None and slot.safe_wal_size < SAFE_WAL_WARNING_BYTES:
        return (
            f"only {slot.safe_wal_size >> 20} MB of WAL can still be written before the slot "
            "is invalidated (max_slot_wal_keep_size); check why the daemon lags"
        )
    if slot.wal_status == "extended":
        return "the slot retains more than max_wal_size of WAL; the daemon is behind"
    return None


def create_slot(conn: psycopg.Connection[Any], name: str) -> Lsn:
    """Create a logical `pgoutput` slot; returns its starting LSN."""
    if get_slot(conn, name) is not None:
        raise CdcError(ErrorKind.SETUP, f"replication slot {name!r} already exists")
    row = conn.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)", (name, PLUGIN)
    ).fetchone()
    assert row is not None
    return Lsn.parse(row[0])


def drop_slot(conn: psycopg.Connection[Any], name: str, force: bool = False) -> None:
    slot = get_slot(conn, name)
    if slot is None:
        raise CdcError(ErrorKind.SETUP, f"replication slot {name!r} does not exist")
    if slot.active:
        if not force:
            raise CdcError(
                ErrorKind.SETUP,
                f"replication slot {name!r} is in use by process {slot.active_pid}; stop the "
                "daemon first, or pass --force to terminate that connection",
            )
        conn.execute("SELECT pg_terminate_backend(%s)", (slot.active_pid,))
        conn.execute(
            "SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (name, name),
        )
        return
    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


# -- publications ---------------------------------------------------------------------------


def schema_tables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "ORDER BY c.relname",
        (schema,),
    ).fetchall()
    return [r[0] for r in rows]


def publication_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        is not None
    )


def create_publication_sql(name: str, schema: str, tables: list[str]) -> sql.Composed:
    if not tables:
        return sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(name))
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
        sql.Identifier(name),
        sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables),
    )


def alter_publication_sql(name: str, action: str, schema: str, table: str) -> sql.Composed:
    verbs = {"add": sql.SQL("ADD TABLE"), "drop": sql.SQL("DROP TABLE")}
    return sql.SQL("ALTER PUBLICATION {} {} {}").format(
        sql.Identifier(name), verbs[action], sql.Identifier(schema, table)
    )


def create_publication(conn: psycopg.Connection[Any], name: str, schema: str) -> list[str]:
    """Create `name` for every table of `schema`; returns the tables."""
    if publication_exists(conn, name):
        raise CdcError(ErrorKind.SETUP, f"publication {name!r} already exists")
    tables = schema_tables(conn, schema)
    conn.execute(create_publication_sql(name, schema, tables))
    return tables


def _require_publication(conn: psycopg.Connection[Any], name: str) -> None:
    if not publication_exists(conn, name):
        raise CdcError(
            ErrorKind.SETUP,
            f"publication {name!r} does not exist; create it with `cdc publication create`",
        )


def add_table(conn: psycopg.Connection[Any], name: str, schema: str, table: str) -> None:
    _require_publication(conn, name)
    if table not in schema_tables(conn, schema):
        raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} does not exist")
    if (schema, table) in publication_tables(conn, name):
        raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} is already in {name!r}")
    conn.execute(alter_publication_sql(name, "add", schema, table))


def drop_table(conn: psycopg.Connection[Any], name: str, schema: str, table: str) -> None:
    _require_publication(conn, name)
    if (schema, table) not in publication_tables(conn, name):
        raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} is not in {name!r}")
    conn.execute(alter_publication_sql(name, "drop", schema, table))


def publication_tables(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s "
        "ORDER BY schemaname, tablename",
        (name,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]
