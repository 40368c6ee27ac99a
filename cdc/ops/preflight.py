"""Checks of the source (and the historic writer) before streaming, with actionable messages.

`check_source` is fatal. `source_findings` and `grant_findings` return findings: an
`error` stops the daemon (or fails `cdc check-grants`), a `warning` is logged and the
daemon goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from cdc.errors import CdcError, ErrorKind
from cdc.stream import eligibility, publications


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning", "ok"]
    check: str
    message: str


def check_primary(conn: psycopg.Connection[Any]) -> None:
    """The source must be a primary: the pipeline creates its publications and slot there
    and writes its heartbeats, which a standby refuses (and Postgres 15 decodes logical
    replication on a primary only)."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row is not None and row[0]:
        raise CdcError(
            ErrorKind.SETUP,
            "the source is a standby (in recovery): the pipeline's publications, slot and "
            "heartbeats live on the primary; point CDC_SOURCE_DSN at the primary",
        )


def check_source(conn: psycopg.Connection[Any]) -> None:
    check_primary(conn)
    row = conn.execute("SHOW wal_level").fetchone()
    level = row[0] if row else "unknown"
    if level != "logical":
        raise CdcError(
            ErrorKind.SETUP,
            f"wal_level is '{level}' but logical replication needs 'logical': run "
            "`ALTER SYSTEM SET wal_level = logical` and restart PostgreSQL",
        )


def _setting(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()
    return str(row[0]) if row and row[0] is not None else ""


def source_findings(
    conn: psycopg.Connection[Any], publication: str, schema: str, slot: str
) -> list[Finding]:
    """What could make the pipeline lose changes or the source fill its disk (`slot`: the
    daemon's, which decides whether tables without a key are replicated)."""
    findings: list[Finding] = []
    if _setting(conn, "max_slot_wal_keep_size") in ("-1", ""):
        findings.append(Finding(
            "warning", "max_slot_wal_keep_size",
            "max_slot_wal_keep_size is unlimited: a stopped daemon makes the slot keep WAL "
            "until the disk is full; set it (e.g. `ALTER SYSTEM SET max_slot_wal_keep_size = "
            "'50GB'`) and watch `cdc status`",
        ))  # fmt: skip
    row = conn.execute(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication "
        "WHERE pubname = %s",
        (publication,),
    ).fetchone()
    if row is not None and not all(row):
        missing = [op for op, on in zip(("insert", "update", "delete", "truncate"), row,
                                        strict=True) if not on]  # fmt: skip
        findings.append(Finding(
            "warning", "publication",
            f"publication {publication!r} does not publish {', '.join(missing)}: the targets "
            f"will not see those; `ALTER PUBLICATION {publication} SET (publish = 'insert, "
            "update, delete, truncate')`",
        ))  # fmt: skip
    outside = conn.execute(
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables "
        "WHERE pubname = %s AND schemaname <> %s ORDER BY 1",
        (publication, schema),
    ).fetchall()
    for (name,) in outside:
        findings.append(Finding(
            "warning", "publication scope",
            f"{name} is published but outside the source schema {schema!r}",
        ))  # fmt: skip
    findings.extend(excluded_findings(conn, publication, schema, slot))
    return findings


def excluded_findings(
    conn: psycopg.Connection[Any], publication: str, schema: str, slot: str
) -> list[Finding]:
    """Each table of `schema` that is not replicated, why, and the statement that fixes it;
    one that is published anyway (by hand, or by an older version) says that Postgres now
    refuses its UPDATE and DELETE. Tables without a key replicated as append-only logs are
    not listed."""
    publishes_changes = True
    listed: set[str] = set()
    if publications.publication_exists(conn, publication):
        publishes_changes = publications.publication_options(conn, publication).publishes_changes
        listed = {t for s, t, _ in publications.listed_tables(conn, publication) if s == schema}
    logs_replicated = publications.logs_replicated(conn, publication, slot)
    findings: list[Finding] = []
    for table in eligibility.source_tables(conn, schema):
        why = eligibility.exclusion(table, publishes_changes)
        if why is None:
            continue
        if logs_replicated and eligibility.logged_only(table) and table.name not in listed:
            continue
        breaking = (
            f" It is in publication {publication!r}, so Postgres refuses its UPDATE and "
            "DELETE now: the daemon removes it at start, or `cdc publication drop-table "
            f"{table.name}`."
            if table.name in listed and not table.unlogged
            else ""
        )
        findings.append(Finding(
            "warning", "excluded",
            f"{table.qualified} is not replicated: {why.reason}.{breaking} Fix: {why.fix}",
        ))  # fmt: skip
    return findings


def grant_findings(
    source: psycopg.Connection[Any],
    historic: psycopg.Connection[Any],
    publication: str,
    historic_schema: str,
) -> list[Finding]:
    """Least privilege, checked: the source role needs REPLICATION and SELECT on the published
    tables (and nothing more to stream); the historic role needs to create and write its
    schema."""
    row = source.execute(
        "SELECT current_user, rolreplication OR rolsuper, rolsuper FROM pg_roles "
        "WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    user, can_replicate, superuser = row
    return [
        *_role_findings(user, can_replicate, superuser),
        *_select_findings(source, user, publication),
        _historic_finding(historic, historic_schema),
    ]


def _role_findings(user: str, can_replicate: bool, superuser: bool) -> list[Finding]:
    findings = [
        Finding("ok", "replication", f"role {user!r} may replicate")
        if can_replicate
        else Finding(
            "error", "replication",
            f"role {user!r} cannot replicate: `ALTER ROLE {user} WITH REPLICATION`",
        )
    ]  # fmt: skip
    if superuser:
        findings.append(Finding(
            "warning", "least privilege",
            f"role {user!r} is a superuser; a role with REPLICATION and SELECT on the "
            "published tables is enough",
        ))  # fmt: skip
    return findings


def _select_findings(source: psycopg.Connection[Any], user: str, publication: str) -> list[Finding]:
    unreadable = source.execute(
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s "
        "AND NOT has_table_privilege(format('%%I.%%I', schemaname, tablename), 'SELECT') "
        "ORDER BY 1",
        (publication,),
    ).fetchall()
    if not unreadable:
        return [Finding("ok", "select", f"role {user!r} can read every published table")]
    return [
        Finding(
            "error", "select", f"role {user!r} cannot read {table}: `GRANT SELECT ON {table} "
            f"TO {user}`",
        )
        for (table,) in unreadable
    ]  # fmt: skip


def _historic_finding(historic: psycopg.Connection[Any], historic_schema: str) -> Finding:
    row = historic.execute(
        "SELECT current_user, has_database_privilege(current_database(), 'CREATE'), "
        "(SELECT has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n WHERE nspname = %s)",
        (historic_schema,),
    ).fetchone()
    assert row is not None
    writer, create_db, create_schema = row
    if create_schema or (create_schema is None and create_db):
        return Finding("ok", "historic", f"role {writer!r} can write {historic_schema}")
    return Finding(
        "error", "historic",
        f"role {writer!r} cannot create tables in {historic_schema!r}: `GRANT CREATE ON "
        f"SCHEMA {historic_schema} TO {writer}` (or CREATE on the database)",
    )  # fmt: skip
