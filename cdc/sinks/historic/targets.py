"""The historic tables as the sink knows them: made (with their `_current` view) on
first use, widened when the source adds a column or widens a column's type
(`cdc.sinks.retype`), and checked: another type change, or a table that gained or lost
its primary key, sets the table aside with the fix to make. The DDL runs in the caller's
transaction, under an advisory lock (the daemon and a backfill may make the same table at
once)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from cdc.apply.batch import TableName
from cdc.errors import CdcError, ErrorKind, rebuild_steps
from cdc.ops.logs import get_logger
from cdc.schema import (
    COMMIT_TIME_COLUMN,
    DELETED_COLUMN,
    VERSION_COLUMN,
    Column,
    TableSchema,
    TypeKind,
)
from cdc.sinks import retype
from cdc.sinks.clickhouse.types import PgType
from cdc.sinks.historic import ddl
from cdc.sinks.historic.ddl import FIRST_USER_OID

# The sink's own columns (`cdc.sinks.historic.ddl.historic_table`): numeric, boolean, timestamptz.
_OWN_TYPES = {VERSION_COLUMN: PgType.NUMERIC, DELETED_COLUMN: PgType.BOOL,
              COMMIT_TIME_COLUMN: PgType.TIMESTAMPTZ}  # fmt: skip
DDL_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
_log = get_logger()


class HistoricTargets:
    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._columns: dict[TableName, list[str]] = {}
        self._types: dict[TableName, dict[str, tuple[int, int]]] = {}
        self._keys: dict[TableName, frozenset[str]] = {}  # the primary key of each table
        self._type_exists: dict[str, bool] = {}  # a user type's name: historic has it

    def forget(self) -> None:
        """Read every table again on next use (a new connection may see a changed one).
        New maps: a call in progress on another thread keeps the ones it started with."""
        self._columns = {}
        self._types = {}
        self._keys = {}

    def knows(self, layout: TableSchema) -> bool:
        """Whether `layout`'s table is known to hold every column of `layout` as it is
        typed (`ensure` would change nothing)."""
        name = (layout.schema, layout.name)
        known, types = self._columns.get(name), self._types.get(name)
        if known is None or types is None or not all(c.name in known for c in layout.columns):
            return False
        if self._keys.get(name) != frozenset(layout.target_key):
            return False
        try:
            return not self._retyped(layout, types)
        except CdcError:
            return False

    def ensure(self, conn: psycopg.Connection[Any], layout: TableSchema) -> None:
        """Make `layout`'s table and view, or add the columns it lacks and widen those the
        source widened; refuse another changed type or key (in the caller's transaction:
        Postgres DDL is transactional)."""
        name = (layout.schema, layout.name)
        columns, types_of = self._columns, self._types
        known = columns.get(name)
        if known is None:
            # `CREATE ... IF NOT EXISTS` is not safe against a concurrent session doing the
            # same (the daemon and a backfill): take turns, until this transaction ends.
            conn.execute(DDL_LOCK_SQL, (f"cdc historic {self.schema}",))
            conn.execute(ddl.historic_schema(self.schema))
            conn.execute(ddl.historic_truncations_table(self.schema))
            types = self._target_columns(conn, layout.name)
            if types:
                self._keys[name] = self._key_of(conn, layout.name)
                self._add_commit_time(conn, layout.name)
            if not types:
                made = replace(layout, columns=tuple(self._held(conn, c) for c in layout.columns))
                conn.execute(ddl.historic_table(self.schema, made))
                conn.execute(ddl.historic_current_view(self.schema, layout))
                types = {c.name: (c.type_oid, c.type_modifier) for c in layout.columns}
                self._keys[name] = frozenset(layout.target_key)
            known = list(types)
            columns[name] = known
            types_of[name] = types
        retype.require_key(layout, f"{self.schema}.{layout.name}", self._keys[name])
        types = types_of[name]
        retyped = self._retyped(layout, types)
        missing = [c for c in layout.columns if c.name not in known]
        if missing or retyped:
            conn.execute(DDL_LOCK_SQL, (f"cdc historic {self.schema}",))
            for column in missing:
                held = self._held(conn, column)
                conn.execute(ddl.historic_add_column(self.schema, layout.name, held))
                known.append(column.name)
                types[column.name] = (column.type_oid, column.type_modifier)
            if retyped:
                self._retype(conn, layout, retyped, types)
            # Every column the table has, those the layout lacks too (dropped at the source,
            # or not published, like a generated one): a view keeps its columns.
            conn.execute(ddl.historic_current_view(self.schema, layout, known))

    def _held(self, conn: psycopg.Connection[Any], column: Column) -> Column:
        """`column` as historic holds it: of its own type, or where historic lacks it (a user
        type of the source, historic in another database) of `ddl.portable_type`."""
        if column.kind is TypeKind.BASE and column.type_oid < FIRST_USER_OID:
            return column
        exists = self._type_exists.get(column.pg_type)
        if exists is None:
            row = conn.execute("SELECT to_regtype(%s) IS NOT NULL", (column.pg_type,)).fetchone()
            exists = self._type_exists[column.pg_type] = bool(row and row[0])
        return column if exists else replace(column, pg_type=ddl.portable_type(column))

    def column_types(self, layout: TableSchema, columns: Sequence[str]) -> list[tuple[int, int]]:
        """The types (OID, modifier) of `columns` of `layout`'s table as it is (`ensure`d),
        the sink's own columns included."""
        types = self._types[(layout.schema, layout.name)]
        return [(_OWN_TYPES[c], -1) if c in _OWN_TYPES else types[c] for c in columns]

    def _retyped(self, layout: TableSchema, types: dict[str, tuple[int, int]]) -> list[Column]:
        """The columns of `layout` whose type widened at the source (`cdc.sinks.retype`;
        `types`: the table's as it is). A type at least as wide is kept (rows streamed
        before a change already followed, replayed; text and varchar hold the same values);
        another change sets the table aside."""
        retyped = []
        for column in layout.columns:
            target = types.get(column.name)
            if target is None or (column.type_oid, column.type_modifier) == target:
                continue
            if column.type_oid >= FIRST_USER_OID or target[0] >= FIRST_USER_OID:
                continue  # user types: their OIDs differ between databases
            ref = retype.type_ref(column)
            if retype.widens(ref, target):
                continue  # the table's type holds every value of the layout's
            if not retype.widens(target, ref):
                raise retype.refused(layout, column.name, column.pg_type)
            retyped.append(column)
        return retyped

    def _retype(
        self,
        conn: psycopg.Connection[Any],
        layout: TableSchema,
        retyped: Sequence[Column],
        types: dict[str, tuple[int, int]],
    ) -> None:
        """Change the historic table's columns to their widened types, as the source did
        (the view, which holds them, made again after). A value Postgres cannot convert
        (kept by a tombstone) or a view of the operator's on `_current` sets the table
        aside."""
        table = f"{self.schema}.{layout.name}"
        try:
            with conn.transaction():
                conn.execute(ddl.historic_drop_current_view(self.schema, layout.name))
                for column in retyped:
                    conn.execute(ddl.historic_retype_column(self.schema, layout.name, column))
        except psycopg.Error as exc:
            raise CdcError(
                ErrorKind.TABLE_CHANGED,
                f"{table}: could not follow the source's type change of "
                f"{', '.join(c.name for c in retyped)}: {str(exc).strip()}. {rebuild_steps()}",
                table=(layout.schema, layout.name),
            ) from exc
        for column in retyped:
            before = types[column.name]
            types[column.name] = (column.type_oid, column.type_modifier)
            _log.info("column_type_followed", table=table, column=column.name,
                      type=column.pg_type, previous_type_oid=before[0])  # fmt: skip

    def _key_of(self, conn: psycopg.Connection[Any], table: str) -> frozenset[str]:
        """The columns of the historic table's primary key (none: a table made otherwise,
        not judged)."""
        row = conn.execute(
            "SELECT array_agg(a.attname::text) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
            "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary",
            (self.schema, table),
        ).fetchone()
        return frozenset(row[0] or ()) if row is not None else frozenset()

    def _add_commit_time(self, conn: psycopg.Connection[Any], table: str) -> None:
        """Add `_commit_time` to a table made by an older version. Only if missing: an
        ALTER TABLE waits for every reader of the table, even when it has nothing to do."""
        present = conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s "
            "AND NOT attisdropped",
            (sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(table))
             .as_string(conn), COMMIT_TIME_COLUMN),
        ).fetchone()  # fmt: skip
        if present is None:
            conn.execute(ddl.historic_commit_time_column(self.schema, table))

    def _target_columns(
        self, conn: psycopg.Connection[Any], table: str
    ) -> dict[str, tuple[int, int]]:
        rows = conn.execute(
            "SELECT a.attname, a.atttypid::int, a.atttypmod FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
            "AND a.attname NOT IN (%s, %s, %s) ORDER BY a.attnum",
            (self.schema, table, VERSION_COLUMN, DELETED_COLUMN, COMMIT_TIME_COLUMN),
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}
