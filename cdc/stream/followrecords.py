"""What the schema follower keeps in the historic database: each table's state
(`_cdc_tables`, shared with backfill and shown by `cdc status`), and the source table each
followed name stood for (`_cdc_followed`: OID and shape), read at a start to tell apart a
table renamed, made again or changed while the daemon was stopped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from cdc.ops import status
from cdc.ops.settings import Settings
from cdc.states import TableState
from cdc.stream.eligibility import Shape


class Followed(NamedTuple):
    """A table the schema follower followed: its OID, and its shape (None: not recorded)."""

    oid: int
    shape: Shape | None


def read_followed(conn: psycopg.Connection[Any], schema: str) -> dict[str, Followed]:
    """The source table each name the schema follower followed stood for, as the last run
    recorded it (`record_followed`)."""
    status.ensure(conn, schema)
    rows = conn.execute(
        sql.SQL("SELECT table_name, source_oid, shape FROM {}").format(
            sql.Identifier(schema, status.FOLLOWED_TABLE)
        )
    ).fetchall()
    return {
        name: Followed(oid, Shape.from_json(shape) if shape else None) for name, oid, shape in rows
    }


def record_followed(
    conn: psycopg.Connection[Any],
    schema: str,
    followed: Mapping[str, Followed],
    gone: Collection[str] = (),
    keep: bool = False,
) -> None:
    """Record `followed` tables, and forget the `gone` ones; with `keep`, only those not
    recorded yet (or without a shape), keeping every record there is."""
    status.ensure(conn, schema)
    table = sql.Identifier(schema, status.FOLLOWED_TABLE)
    upsert = sql.SQL(
        "INSERT INTO {table} AS f (table_name, source_oid, shape) VALUES (%s, %s, %s) "
        "ON CONFLICT (table_name) DO UPDATE SET source_oid = excluded.source_oid, "
        "shape = excluded.shape{keep}"
    ).format(table=table, keep=sql.SQL(" WHERE f.shape IS NULL" if keep else ""))
    with conn.transaction():
        if gone:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE table_name = ANY(%s)").format(table), (list(gone),)
            )
        for name, (oid, shape) in followed.items():
            conn.execute(upsert, (name, oid, shape.to_json() if shape is not None else None))


class FollowRecords:
    """The follower's records, in the historic database `settings` names."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._settings.require_historic_dsn(), autocommit=True)

    def states(self) -> dict[str, str]:
        """Each table's recorded state."""
        settings = self._settings
        with self._connect() as conn:
            _, states = status.read(conn, settings.historic_schema, settings.slot)
        return {s.table: s.state for s in states}

    def rebuilt(self, recorded: Mapping[str, str], listed: set[str]) -> set[str]:
        """The published tables the last run set aside whose historic table is gone or
        empty (made again at this start): the operator dropped their targets to have them
        made again (`rebuild_steps`). (Targets that still cannot take the table set it
        aside again at this start, before this look.)"""
        aside = [n for n in listed if recorded.get(n) == TableState.QUARANTINED]
        if not aside:
            return set()
        schema = self._settings.historic_schema
        rebuilt = set()
        with self._connect() as conn:
            for name in aside:
                table = sql.Identifier(schema, name)
                row = conn.execute(
                    "SELECT to_regclass(%s) IS NULL", (table.as_string(conn),)
                ).fetchone()
                empty = (
                    bool(row and row[0])
                    or conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(table)).fetchone()
                    is None
                )
                if empty:
                    rebuilt.add(name)
        return rebuilt

    def followed(self) -> tuple[dict[str, int], dict[str, Shape]]:
        """The OIDs and shapes of the tables the names followed at the last run stood for
        (a table renamed, made again, or whose columns changed while the daemon was stopped
        is told apart by them)."""
        settings = self._settings
        with self._connect() as conn:
            followed = read_followed(conn, settings.historic_schema)
        oids = {name: f.oid for name, f in followed.items()}
        return oids, {name: f.shape for name, f in followed.items() if f.shape is not None}

    def update_followed(
        self,
        before_oids: Mapping[str, int],
        before_shapes: Mapping[str, Shape],
        oids: Mapping[str, int],
        shapes: Mapping[str, Shape],
    ) -> None:
        """Record the names followed now with their tables' OIDs and shapes, for the next
        run: those that differ from the record (`before_*`: as recorded by the last look,
        or the last run); a table truncated often replaces its files at every look."""
        changed = {
            name: Followed(oid, shapes.get(name))
            for name, oid in oids.items()
            if before_oids.get(name) != oid or before_shapes.get(name) != shapes.get(name)
        }
        gone = [name for name in before_oids if name not in oids]
        settings = self._settings
        with self._connect() as conn:
            record_followed(conn, settings.historic_schema, changed, gone)

    def record(self, table: str, state: TableState, error: str | None) -> None:
        settings = self._settings
        status.record_table(settings.require_historic_dsn(), settings.historic_schema, table,
                            state, error)  # fmt: skip
