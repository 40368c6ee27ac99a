"""The director schema the coaching API owns, created and upgraded on API start.

Migrations are numbered and recorded in `<schema>.schema_migrations`; `migrate` applies the
missing ones in one transaction under a transaction-level advisory lock keyed by the
schema name, so two API processes starting together neither fail nor apply a migration
twice, and running it again is a no-op. Every statement is also idempotent on its own
(`IF NOT EXISTS`). DDL is built by pure functions with the schema name quoted by
`psycopg.sql.Identifier`.

`scores.criterion_id` is text: criteria belong to scorecard templates managed outside
this API (some keyed by uuid, some by slug), so no foreign key or uuid type is imposed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

VERSION_TABLE: Final = "schema_migrations"
LOCK_NAMESPACE: Final = "coaching-api.migrations:"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str], list[sql.Composed]]


def create_schema(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


def create_version_table(schema: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "version integer PRIMARY KEY, "
        "name text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(schema, VERSION_TABLE))


def lock(schema: str) -> sql.Composed:
    """Serialise migrations of one schema (per database) until the transaction ends."""
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))").format(
        sql.Literal(LOCK_NAMESPACE + schema)
    )


def select_versions(schema: str) -> sql.Composed:
    return sql.SQL("SELECT version FROM {} ORDER BY version").format(
        sql.Identifier(schema, VERSION_TABLE)
    )


def record_version(schema: str) -> sql.Composed:
    return sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
        sql.Identifier(schema, VERSION_TABLE)
    )


def scorecard_tables(schema: str) -> list[sql.Composed]:
    scorecards = sql.Identifier(schema, "scorecards")
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
            "agent_id uuid NOT NULL, "
            "reviewer_id uuid, "
            "template_id uuid NOT NULL, "
            "status text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'submitted')), "
            "total_score numeric, "
            "notes text, "
            "created_at timestamptz NOT NULL DEFAULT now(), "
            "updated_at timestamptz NOT NULL DEFAULT now(), "
            "submitted_at timestamptz, "
            "CHECK ((status = 'submitted') = (submitted_at IS NOT NULL)))"
        ).format(scorecards),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "scorecard_id uuid NOT NULL REFERENCES {} (id) ON DELETE CASCADE, "
            "criterion_id text NOT NULL, "
            "score numeric NOT NULL CHECK (score >= 0), "
            "comment text, "
            "updated_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (scorecard_id, criterion_id))"
        ).format(sql.Identifier(schema, "scores"), scorecards),
    ]


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "scorecards and scores", scorecard_tables),
)


def migrate(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Apply the missing migrations in one transaction; return the versions applied."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute(lock(schema))
        conn.execute(create_schema(schema))
        conn.execute(create_version_table(schema))
        present = {row[0] for row in conn.execute(select_versions(schema))}
        for migration in MIGRATIONS:
            if migration.version in present:
                continue
            for statement in migration.statements(schema):
                conn.execute(statement)
            conn.execute(record_version(schema), (migration.version, migration.name))
            applied.append(migration.version)
    return applied
