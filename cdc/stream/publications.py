"""Publications: create, repair, inspect (SQL built by pure functions).

A pipeline is one `pgoutput` slot plus one publication listing the source schema's tables
that may be published (`cdc.stream.eligibility`: never one whose UPDATE and DELETE Postgres would
then refuse). The publication lists tables explicitly (not `FOR TABLES IN SCHEMA`), each
partitioned table by its root, with `publish_via_partition_root`, so a partitioned table's
changes arrive under its own name whatever partition they land in. The running daemon adds
tables created later (`cdc.stream.following`); `cdc publication add-table` does it by hand
(`cdc.stream.membership`).

Tables without a usable replica identity go into a second publication, `<name>_append`
(`append_publication`), which publishes inserts and truncates only, so Postgres keeps
accepting their UPDATE and DELETE; they are replicated as append-only logs. The slot
streams both publications.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import REPLAY_LOST, CdcError, ErrorKind
from cdc.stream import eligibility
from cdc.stream.eligibility import Exclusion
from cdc.stream.slots import get_slot


def publication_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
        is not None
    )


VIA_ROOT = sql.SQL("publish_via_partition_root = true")
INSERTS_ONLY = sql.SQL("publish = 'insert, truncate', publish_via_partition_root = true")
APPEND_SUFFIX = "_append"


def append_publication(name: str) -> str:
    """The publication of the append-only logs that goes with publication `name`."""
    return name + APPEND_SUFFIX


def logs_replicated(conn: psycopg.Connection[Any], publication: str, slot: str) -> bool:
    """Whether tables without a key are replicated as append-only logs: the publication of
    them that goes with `publication` exists, or `slot` does not yet (the daemon's first
    start makes both; a slot made without that publication cannot stream it)."""
    append = append_publication(publication)
    return publication_exists(conn, append) or get_slot(conn, slot) is None


def create_publication_sql(
    name: str, schema: str, tables: list[str], options: sql.Composable = VIA_ROOT
) -> sql.Composed:
    if not tables:
        return sql.SQL("CREATE PUBLICATION {} WITH ({})").format(sql.Identifier(name), options)
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH ({})").format(
        sql.Identifier(name),
        sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables),
        options,
    )


def create_append_publication(conn: psycopg.Connection[Any], name: str, schema: str) -> list[str]:
    """Create `append_publication(name)` (inserts and truncates only) for every table of
    `schema` that is replicated as an append-only log; returns those tables."""
    _, logs, _ = eligibility.classify(eligibility.source_tables(conn, schema))
    tables = [t.name for t in logs]
    conn.execute(create_publication_sql(append_publication(name), schema, tables, INSERTS_ONLY))
    return tables


def alter_publication_sql(name: str, action: str, schema: str, table: str) -> sql.Composed:
    verbs = {"add": sql.SQL("ADD TABLE"), "drop": sql.SQL("DROP TABLE")}
    return sql.SQL("ALTER PUBLICATION {} {} {}").format(
        sql.Identifier(name), verbs[action], sql.Identifier(schema, table)
    )


def via_root_sql(name: str) -> sql.Composed:
    return sql.SQL("ALTER PUBLICATION {} SET ({})").format(sql.Identifier(name), VIA_ROOT)


def create_publication(
    conn: psycopg.Connection[Any], name: str, schema: str
) -> tuple[list[str], list[str], list[Exclusion]]:
    """Create `name` for every table of `schema` that may be published with its updates and
    deletes, and its append publication (unless it exists) for the tables replicated as
    append-only logs; returns the tables of each, and the exclusions of the others."""
    if publication_exists(conn, name):
        raise CdcError(ErrorKind.SETUP, f"publication {name!r} already exists")
    keyed, logs, excluded = eligibility.classify(eligibility.source_tables(conn, schema))
    tables = [t.name for t in keyed]
    with conn.transaction():
        conn.execute(create_publication_sql(name, schema, tables))
        if not publication_exists(conn, append_publication(name)):
            conn.execute(create_publication_sql(append_publication(name), schema,
                                                [t.name for t in logs], INSERTS_ONLY))  # fmt: skip
    return tables, [t.name for t in logs], excluded


@dataclass(frozen=True)
class PublicationOptions:
    publishes_changes: bool  # UPDATE or DELETE: then only tables with a usable identity
    via_root: bool


def publication_options(conn: psycopg.Connection[Any], name: str) -> PublicationOptions:
    row = conn.execute(
        "SELECT pubupdate OR pubdelete, pubviaroot FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    if row is None:
        raise CdcError(
            ErrorKind.SETUP,
            f"publication {name!r} does not exist; create it with `cdc publication create`",
        )
    return PublicationOptions(row[0], row[1])


def listed_tables(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, str, bool]]:
    """The tables the publication names itself (a partitioned table by its root, unlike
    `pg_publication_tables` without via-root), each with whether it is a partition."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, c.relispartition FROM pg_publication_rel r "
        "JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s ORDER BY 1, 2",
        (name,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


@dataclass(frozen=True)
class Repair:
    """One change `repair_publication` made, for the log."""

    event: str
    table: str
    detail: str


def repair_publication(conn: psycopg.Connection[Any], name: str, schema: str) -> list[Repair]:
    """Bring a publication made by an older version in line, in one transaction: publish
    partitioned tables via their root (the partitions it listed, and the roots whose
    changes it sent under the partitions' names, are removed: the daemon adds each root
    again as a new table and copies it), and remove every table whose UPDATE and DELETE
    Postgres would refuse while it is published."""
    repairs: list[Repair] = []
    with conn.transaction():
        options = publication_options(conn, name)
        listed = listed_tables(conn, name)
        if not options.via_root:
            conn.execute(via_root_sql(name))
            repairs.append(Repair("publication_via_root", name,
                                  "partitioned tables now arrive under their root"))  # fmt: skip
            roots = {t.name for t in eligibility.source_tables(conn, schema) if t.partitioned}
            for table_schema, table, is_partition in listed:
                if is_partition or (table_schema == schema and table in roots):
                    conn.execute(alter_publication_sql(name, "drop", table_schema, table))
                    repairs.append(Repair(
                        "publication_table_replaced", f"{table_schema}.{table}",
                        "listed by partition or without via-root: its root is added and copied",
                    ))  # fmt: skip
        else:
            for table_schema, table, is_partition in listed:
                if is_partition:
                    conn.execute(alter_publication_sql(name, "drop", table_schema, table))
                    repairs.append(Repair("publication_table_replaced", f"{table_schema}.{table}",
                                          "a partition: its root is published"))  # fmt: skip
        if options.publishes_changes:
            still = {(s, t) for s, t, _ in listed_tables(conn, name)}
            for found in eligibility.source_tables(conn, schema):
                why = eligibility.exclusion(found)
                if why is not None and (schema, found.name) in still:
                    conn.execute(alter_publication_sql(name, "drop", schema, found.name))
                    repairs.append(Repair("publication_table_removed", f"{schema}.{found.name}",
                                          f"{why.reason}; fix: {why.fix}"))  # fmt: skip
    return repairs


def replicated_tables(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, str]]:
    """The tables of publication `name` and of its append publication."""
    return sorted({*publication_tables(conn, name),
                   *publication_tables(conn, append_publication(name))})  # fmt: skip


def publication_tables(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s "
        "ORDER BY schemaname, tablename",
        (name,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def explain_lost(
    conn: psycopg.Connection[Any], slot: str, publication: str, exc: CdcError
) -> CdcError:
    """The server says 'does not exist' for a dropped slot and a dropped publication
    alike (same SQLSTATE): look which one it is and say what to do."""
    if get_slot(conn, slot) is None:
        return CdcError(ErrorKind.SLOT_LOST, f"{exc}; to recover: {REPLAY_LOST}")
    if not publication_exists(conn, publication):
        return CdcError(
            ErrorKind.SETUP,
            f"publication {publication!r} was dropped while streaming: recreate it "
            "(`cdc publication create`), restart, then `cdc backfill --replace` the tables "
            "to copy the changes made without it (deletes too)",
        )
    return exc
