"""The historic sink's row statements on one connection, inside the caller's transaction:
tombstones whose row holds their values marked deleted, rows new at the source COPYed
straight into the table, the others COPYed into the session's temporary stage (in
Postgres' binary COPY form where every column's type allows, `cdc.load.copybinary`) and
applied by one version-guarded upsert. The SQL is built in `cdc.sinks.historic.sql`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from cdc.apply.batch import TableName
from cdc.load import copybinary
from cdc.schema import TableSchema
from cdc.sinks.historic.shares import Share
from cdc.sinks.historic.sql import (
    copy_sql,
    row_columns,
    stage_exists_sql,
    stage_name,
    stage_sql,
    tombstones_sql,
    upsert_sql,
    watermark_sql,
)
from cdc.sinks.historic.targets import HistoricTargets

# After a batch whose new rows were found in the table already (a replay, a backfill, a
# key deleted and inserted again), this many batches of the table go the staged way only.
DIRECT_INSERT_BACKOFF = 16


class RowWriter:
    """Writes rows into `<schema>.<table>`; shared by the sink's connections (its only
    state, which tables go the staged way for a while, is a hint)."""

    def __init__(self, schema: str, targets: HistoricTargets) -> None:
        self.schema = schema
        self._targets = targets
        self._direct_backoff: dict[TableName, int] = {}

    def write(self, conn: psycopg.Connection[Any], layout: TableSchema, share: Share) -> None:
        """Mark the kept tombstones deleted, COPY the rows new at the source straight in
        (staged with the others where one is there already), stage and upsert the rest.

        A kept tombstone's row may be gone since it was read (a replacing copy's
        TRUNCATE-like removal, from another session, between the batch's completion and
        this write): marked, it would be lost, and a copy older than the delete would
        bring the row back for good. When fewer rows are marked than there are such
        tombstones, they are all staged and upserted with the others (the version guard
        leaves those marked, or newer, as they are)."""
        staged = share.others
        if share.tombstones is not None:
            marked = conn.execute(tombstones_sql(self.schema, layout), share.tombstones)
            if marked.rowcount < len(share.tombstone_lines):
                staged = share.tombstone_lines + staged
        columns = row_columns(layout)
        new = b"".join(share.inserted)
        if share.lowest is not None and not self.insert_new(
            conn, layout, columns, new, share.lowest
        ):
            staged = share.inserted + staged
        if staged:
            self.stage_and_upsert(conn, layout, columns, b"".join(staged))

    def insert_new(
        self,
        conn: psycopg.Connection[Any],
        layout: TableSchema,
        columns: Sequence[str],
        data: bytes,
        lowest: int,
    ) -> bool:
        """COPY rows expected to be new (inserted at the source, or copied by a backfill)
        straight into the table, skipping the staged upsert; False (nothing written) if
        one of their keys is there already, or if `lowest`, their lowest version, is not
        above the table's truncate watermark. The caller then stages them instead."""
        name = (layout.schema, layout.name)
        if self._direct_backoff.get(name, 0) > 0:
            self._direct_backoff[name] -= 1
            return False
        row = conn.execute(watermark_sql(self.schema), (layout.name,)).fetchone()
        if row is not None and lowest <= row[0]:
            return False
        target = sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(layout.name))
        try:
            with conn.transaction():
                self._copy_in(conn, layout, target, columns, data)
        except psycopg.errors.UniqueViolation:
            self._direct_backoff[name] = DIRECT_INSERT_BACKOFF
            return False
        return True

    def stage_and_upsert(
        self,
        conn: psycopg.Connection[Any],
        layout: TableSchema,
        columns: Sequence[str],
        data: bytes,
    ) -> None:
        """COPY rows into the session's temporary stage for `layout` (made on first use;
        emptied at commit), then upsert them with the version guard."""
        stage = stage_name(layout, self._targets.column_types(layout, row_columns(layout)))
        found = conn.execute(stage_exists_sql(stage)).fetchone()
        if found is None or found[0] is None:  # a new session, or its making rolled back
            for statement in stage_sql(self.schema, layout, stage):
                conn.execute(statement)
        self._copy_in(conn, layout, sql.Identifier(stage), columns, data)
        conn.execute(upsert_sql(self.schema, layout, stage))

    def _copy_in(
        self,
        conn: psycopg.Connection[Any],
        layout: TableSchema,
        table: sql.Composable,
        columns: Sequence[str],
        data: bytes,
    ) -> None:
        """COPY `data`, COPY text rows of `columns`, into `table` (`layout`'s historic
        table or its stage): in binary where they convert (`cdc.load.copybinary`)."""
        plan = copybinary.plan([oid for oid, _ in self._targets.column_types(layout, columns)])
        binary = None if plan is None else copybinary.to_binary(data, plan)
        with conn.cursor() as cur, cur.copy(copy_sql(table, columns, binary is not None)) as pipe:
            pipe.write(data if binary is None else binary)
