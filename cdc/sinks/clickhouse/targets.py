"""The ClickHouse tables as the sink knows them: the database and the truncations table,
each table with its Distributed table (on a cluster) and its `_current` view, made on
first use and widened as the source adds columns, drops NOT NULL or widens a type.
ClickHouse DDL is not transactional: every statement is idempotent, and the first use of
a table in a process makes whatever a killed run left unmade."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdc.apply.batch import TableName
from cdc.errors import CdcError, ErrorKind, rebuild_steps
from cdc.ops.logs import get_logger
from cdc.schema import (
    COMMIT_TIME_COLUMN,
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    TableSchema,
)
from cdc.sinks import retype
from cdc.sinks.clickhouse import ddl
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.types import clickhouse_type

REMAKE_SUFFIX = "__cdc_retype"  # the copy of a table whose key column widened, while made
_log = get_logger()


class ClickHouseTargets:
    def __init__(self, client: Callable[[], Any], database: str, cluster: str | None) -> None:
        self._client = client
        self.database = database
        self.cluster = cluster
        # Per table: its columns in ClickHouse and their types, as last read or written, and
        # the columns it is ordered (keyed) by.
        self._columns: dict[TableName, dict[str, str]] = {}
        self._keys: dict[TableName, frozenset[str]] = {}
        self._database_ready = False

    def ensure_database(self) -> None:
        if self._database_ready:
            return
        client, cluster = self._client(), self.cluster
        client.command(ddl.clickhouse_database(self.database, cluster))
        self._drop_leftover_copies()
        client.command(ddl.clickhouse_truncations_table(self.database, cluster))
        if cluster is not None:
            client.command(
                ddl.clickhouse_distributed_table(
                    self.database, TRUNCATIONS_TABLE, ("table_name",), cluster
                )
            )
        self._database_ready = True

    def ensure(self, layout: TableSchema) -> dict[str, str]:
        """Make `layout`'s table, its Distributed table (cluster) and its view, or bring
        them up to `layout`'s columns. ClickHouse DDL is not transactional and a kill can
        fall between two statements: so the first call for a table in a process also
        makes whatever a killed run left unmade (every statement is idempotent)."""
        client = self._client()
        cluster = self.cluster
        name = (layout.schema, layout.name)
        known = self._columns.get(name)
        first = known is None
        if known is None:
            self.ensure_database()
            known, self._keys[name] = self._target_columns(layout.name)
            if known:
                if not self._has_commit_time(layout.name):  # made by an older version
                    for table_name in self._physical(layout.name):
                        client.command(
                            ddl.clickhouse_commit_time_column(self.database, table_name, cluster)
                        )
            else:
                client.command(ddl.clickhouse_table(self.database, layout, cluster))
                known = {c.name: clickhouse_type(c) for c in layout.columns}
                self._keys[name] = frozenset(layout.target_key)
            if cluster is not None:
                client.command(
                    ddl.clickhouse_distributed_table(
                        self.database, layout.name, layout.target_key, cluster
                    )
                )
            self._columns[name] = known
        retype.require_key(layout, f"ClickHouse {self.database}.{layout.name}", self._keys[name])
        added, widened = ddl.clickhouse_widenings(known, layout)
        retyped = _retyped(known, layout)
        if not added and not widened and not retyped and not first:
            return known
        if retyped:
            self._retype(layout, known, retyped)
        for table_name in self._physical(layout.name):
            for column in added:
                client.command(
                    ddl.clickhouse_add_column(self.database, table_name, column, cluster)
                )
            for column_name in widened:
                client.command(
                    ddl.clickhouse_make_nullable(
                        self.database, table_name, column_name, known[column_name], cluster
                    )
                )
        for column in added:
            known[column.name] = ddl.added_column_type(column)
        for column_name in widened:
            known[column_name] = ddl.nullable_type(known[column_name])
        client.command(ddl.clickhouse_current_view(self.database, layout, cluster, list(known)))
        return known

    def _retype(self, layout: TableSchema, known: dict[str, str], retyped: dict[str, str]) -> None:
        """Widen the columns the source widened (`retyped`: name -> new type). A key
        column cannot change in place (the table's parts are sorted by it): the table is
        copied into one made with the new types, and the two swapped at once."""
        table = f"{self.database}.{layout.name}"
        if any(name in layout.target_key for name in retyped):
            if self.cluster is not None:
                raise CdcError(
                    ErrorKind.TABLE_CHANGED,
                    f"key column(s) {', '.join(n for n in retyped if n in layout.target_key)} "
                    f"of {layout.qualified_name} widened at the source; ClickHouse cannot "
                    "change a key column in place, and on a cluster the daemon does not "
                    f"remake {table}. {rebuild_steps()} (in ClickHouse: {table}, its _all "
                    "table and _current view, on the cluster)",
                    table=(layout.schema, layout.name),
                )
            self._remake(layout, {**known, **retyped})
        else:
            client = self._client()
            for table_name in self._physical(layout.name):
                for name, ch_type in retyped.items():
                    client.command(ddl.clickhouse_retype_column(
                        self.database, table_name, name, ch_type, self.cluster))  # fmt: skip
        for name, ch_type in retyped.items():
            _log.info("column_type_followed", table=table, column=name, type=ch_type,
                      previous_type=known[name])  # fmt: skip
            known[name] = ch_type

    def _remake(self, layout: TableSchema, types: dict[str, str]) -> None:
        """Copy `layout`'s table into a new one of column `types`, then swap them (one
        atomic EXCHANGE: readers see the old table or the new one). A copy a kill cut short
        is dropped by the next attempt."""
        client, database, made = self._client(), self.database, layout.name + REMAKE_SUFFIX
        old, new = (
            f"{quote_identifier(database)}.{quote_identifier(name)}" for name in (layout.name, made)
        )
        columns = ", ".join(
            map(quote_identifier, [*types, VERSION_COLUMN, DELETED_COLUMN, COMMIT_TIME_COLUMN])
        )
        client.command(f"DROP TABLE IF EXISTS {new}")
        key = layout.target_key
        client.command(ddl.clickhouse_table_of(database, made, list(types.items()), key))
        client.command(f"INSERT INTO {new} ({columns}) SELECT {columns} FROM {old}")
        client.command(f"EXCHANGE TABLES {old} AND {new}")
        client.command(f"DROP TABLE {new}")

    def _drop_leftover_copies(self) -> None:
        """Drop the copies (`REMAKE_SUFFIX`) a kill left behind: after the swap the copy is
        the old table, before it an unfinished one; the next remake makes its own."""
        result = self._client().query(
            "SELECT name FROM system.tables WHERE database = {db:String} "
            "AND endsWith(name, {suffix:String})",
            parameters={"db": self.database, "suffix": REMAKE_SUFFIX},
        )
        for (name,) in result.result_rows:
            self._client().command(ddl.clickhouse_drop(self.database, name))
            _log.info("leftover_copy_dropped", table=f"{self.database}.{name}")

    def _physical(self, table_name: str) -> list[str]:
        """The tables holding `table_name`'s columns: on a cluster also its Distributed
        table, whose columns are its own."""
        if self.cluster is None:
            return [table_name]
        return [table_name, ddl.distributed_name(table_name)]

    def _has_commit_time(self, table: str) -> bool:
        result = self._client().query(
            "SELECT count() FROM system.columns WHERE database = {db:String} "
            "AND table = {table:String} AND name = {name:String}",
            parameters={"db": self.database, "table": table, "name": COMMIT_TIME_COLUMN},
        )
        return bool(result.result_rows[0][0])

    def _target_columns(self, table: str) -> tuple[dict[str, str], frozenset[str]]:
        """The table's columns (the sink's own left out) with their types, and the columns
        it is ordered by (its key)."""
        result = self._client().query(
            "SELECT name, type, is_in_sorting_key FROM system.columns WHERE database = "
            "{db:String} AND table = {table:String} ORDER BY position",
            parameters={"db": self.database, "table": table},
        )
        own = (VERSION_COLUMN, DELETED_COLUMN, COMMIT_TIME_COLUMN)
        columns = {name: kind for name, kind, _ in result.result_rows if name not in own}
        return columns, frozenset(name for name, _, key in result.result_rows if key)


def _retyped(known: dict[str, str], layout: TableSchema) -> dict[str, str]:
    """The columns whose type the source widened (`cdc.sinks.retype.clickhouse_widens`):
    name -> the wider type, Nullable if the column is. Any other difference is left as it
    is: the historic sink sets aside a table whose type change is not followed, and a
    narrower type here is that of rows streamed before a change already followed."""
    retyped = {}
    for column in layout.columns:
        have = known.get(column.name)
        if have is None:
            continue
        want = clickhouse_type(column)
        if ddl.nullable_type(have) == have:
            want = ddl.nullable_type(want)
        if want != have and retype.clickhouse_widens(have, want):
            retyped[column.name] = want
    return retyped
