"""DDL of the historic Postgres schema, built by pure functions (`cdc.sinks.ddl` says
what both targets share).

Historic columns are all nullable except the key (columns dropped at the source stay,
and a tombstone carries only its key). Identifiers are always quoted
(`psycopg.sql.Identifier`); Postgres type texts come from `format_type()` in the catalog
and are used verbatim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from psycopg import sql

from cdc.schema import (
    COMMIT_TIME_COLUMN,
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    Column,
    TableSchema,
    TypeKind,
)
from cdc.sinks.ddl import current_view_name

PG_VERSION_TYPE: Final = "numeric(39,0)"  # 2**128 - 1 has 39 digits
PG_COMMIT_TIME_TYPE: Final = "timestamptz"
FIRST_USER_OID: Final = 16384  # FirstNormalObjectId: built-in types are below


def historic_schema(schema_name: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema_name))


def portable_type(column: Column) -> str:
    """The type that holds `column`'s values in a database without its user types (a
    historic database other than the source's): a domain as its base type; an enum, a
    composite, a range, an extension's type as text (their output text); arrays of them
    as arrays of that."""
    if column.kind is TypeKind.DOMAIN and column.base_type is not None:
        return portable_type(column.base_type)
    if column.kind is TypeKind.ARRAY and column.element is not None:
        element = portable_type(column.element)
        return element if element.endswith("[]") else f"{element}[]"
    if column.kind is TypeKind.BASE and column.type_oid < FIRST_USER_OID:
        return column.pg_type
    return "text"


def _pg_column(column: Column, not_null: bool) -> sql.Composed:
    return sql.SQL("{} {}{}").format(
        sql.Identifier(column.name),
        sql.SQL(column.pg_type),
        sql.SQL(" NOT NULL" if not_null else ""),
    )


def historic_table(schema_name: str, table: TableSchema) -> sql.Composed:
    """`CREATE TABLE IF NOT EXISTS` of the historic copy of `table`."""
    columns = [_pg_column(c, c.name in table.primary_key) for c in table.columns]
    columns.append(
        sql.SQL("{} {} NOT NULL").format(sql.Identifier(VERSION_COLUMN), sql.SQL(PG_VERSION_TYPE))
    )
    columns.append(
        sql.SQL("{} boolean NOT NULL DEFAULT false").format(sql.Identifier(DELETED_COLUMN))
    )
    columns.append(
        sql.SQL("{} {}").format(sql.Identifier(COMMIT_TIME_COLUMN), sql.SQL(PG_COMMIT_TIME_TYPE))
    )
    columns.append(
        sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, table.target_key))
        )
    )
    return sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} ({})").format(
        sql.Identifier(schema_name), sql.Identifier(table.name), sql.SQL(", ").join(columns)
    )


def historic_truncations_table(schema_name: str) -> sql.Composed:
    """The per-table truncate watermarks: rows at or below it are gone."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.{} (table_name text PRIMARY KEY, version {} NOT NULL)"
    ).format(
        sql.Identifier(schema_name), sql.Identifier(TRUNCATIONS_TABLE), sql.SQL(PG_VERSION_TYPE)
    )


def historic_current_view(
    schema_name: str, table: TableSchema, columns: Sequence[str] | None = None
) -> sql.Composed:
    """`<table>_current`: live rows newer than the table's truncate watermark. `columns`
    (default: the table's): every column of the historic table, in its order; Postgres
    replaces a view only with the columns it had, in place, and new ones after them."""
    schema = sql.Identifier(schema_name)
    return sql.SQL(
        "CREATE OR REPLACE VIEW {schema}.{view} AS SELECT {columns} FROM {schema}.{table} "
        "WHERE NOT {deleted} AND {version} > coalesce("
        "(SELECT version FROM {schema}.{truncations} WHERE table_name = {name}), 0)"
    ).format(
        schema=schema,
        view=sql.Identifier(current_view_name(table.name)),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns or table.column_names)),
        table=sql.Identifier(table.name),
        deleted=sql.Identifier(DELETED_COLUMN),
        version=sql.Identifier(VERSION_COLUMN),
        truncations=sql.Identifier(TRUNCATIONS_TABLE),
        name=sql.Literal(table.name),
    )


def historic_commit_time_column(schema_name: str, table_name: str) -> sql.Composed:
    """Add `_commit_time` to a historic table made before it existed."""
    return sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS {} {}").format(
        sql.Identifier(schema_name),
        sql.Identifier(table_name),
        sql.Identifier(COMMIT_TIME_COLUMN),
        sql.SQL(PG_COMMIT_TIME_TYPE),
    )


def historic_add_column(schema_name: str, table_name: str, column: Column) -> sql.Composed:
    """Add a column (nullable). The rows written before it hold what they hold at the
    source: `column.missing`, given as its default, else NULL. The default stays: a row
    from before the change that a replay writes without the column gets it too (every
    write of a later row names the column)."""
    add = sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS {}").format(
        sql.Identifier(schema_name), sql.Identifier(table_name), _pg_column(column, False)
    )
    if column.missing is None:
        return add
    return sql.SQL("{} DEFAULT {}::{}").format(
        add, sql.Literal(column.missing.decode()), sql.SQL(column.pg_type)
    )


def historic_drop_current_view(schema_name: str, table_name: str) -> sql.Composed:
    return sql.SQL("DROP VIEW IF EXISTS {}.{}").format(
        sql.Identifier(schema_name), sql.Identifier(current_view_name(table_name))
    )


def historic_drop_table(schema_name: str, table_name: str) -> sql.Composed:
    """Refused (RESTRICT) while a view of someone else's reads the table."""
    return sql.SQL("DROP TABLE IF EXISTS {}.{}").format(
        sql.Identifier(schema_name), sql.Identifier(table_name)
    )


def historic_retype_column(schema_name: str, table_name: str, column: Column) -> sql.Composed:
    """Change a column to `column`'s type by Postgres' own conversion (no `USING`), as an
    `ALTER COLUMN ... TYPE` at the source does by default."""
    return sql.SQL("ALTER TABLE {}.{} ALTER COLUMN {} TYPE {}").format(
        sql.Identifier(schema_name),
        sql.Identifier(table_name),
        sql.Identifier(column.name),
        sql.SQL(column.pg_type),
    )


def historic_drop_not_null(schema_name: str, table_name: str, column_name: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {}.{} ALTER COLUMN {} DROP NOT NULL").format(
        sql.Identifier(schema_name), sql.Identifier(table_name), sql.Identifier(column_name)
    )
