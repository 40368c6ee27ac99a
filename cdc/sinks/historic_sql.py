"""The historic sink's SQL, built by pure functions: the staging table's COPY and fill,
the version-guarded upsert, the copy inside the source database, truncations.

Every write is guarded twice: a row only replaces an older version of itself
(`ON CONFLICT ... WHERE t._version < excluded._version`), and only rows above the table's
truncate watermark (`_cdc_truncations`) are written at all. Every `INSERT ... SELECT` takes
its rows in primary-key order: two of them that meet on keys (the daemon's upsert and a
backfill's chunk) lock those keys in the same order, so they wait for each other instead
of deadlocking.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from cdc import rowtext
from cdc.batch import Key, TableBatch
from cdc.pgoutput import UNCHANGED_TOAST
from cdc.schema import DELETED_COLUMN, TRUNCATIONS_TABLE, VERSION_COLUMN, TableSchema

STAGE_TABLE = "_cdc_stage"
UNCHANGED_COLUMN = "_cdc_unchanged"
ALL_ROWS = sql.SQL("true")


def incomplete_rows(table: TableBatch, keys: Sequence[Key]) -> bytes:
    """COPY text of rows with values to fill: NULL in their place, and the int2[] of the
    positions to take from the historic row, after `_version` and `_is_deleted`."""
    lines = []
    for key in keys:
        image = table.rows[key]
        values = image.values
        unchanged = [b"%d" % (i + 1) for i, v in enumerate(values) if v is UNCHANGED_TOAST]
        row = rowtext.escaped_fields(tuple(None if v is UNCHANGED_TOAST else v for v in values))
        marker = b"{%s}" % b",".join(unchanged)
        lines.append(b"%s\t%d\t%d\t%s\n" % (row, image.version, image.deleted, marker))
    return b"".join(lines)


def row_columns(layout: TableSchema) -> list[str]:
    """The columns of a `cdc.rowtext` line."""
    return [*layout.column_names, VERSION_COLUMN, DELETED_COLUMN]


def copy_sql(table: sql.Composable, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        table, sql.SQL(", ").join(map(sql.Identifier, columns))
    )


def watermark_sql(schema: str) -> sql.Composed:
    """The truncate watermark of the table named by the one parameter (no row: none)."""
    return sql.SQL("SELECT version FROM {}.{} WHERE table_name = %s").format(
        sql.Identifier(schema), sql.Identifier(TRUNCATIONS_TABLE)
    )


def fill_sql(schema: str, layout: TableSchema) -> sql.Composed:
    """Take values marked unchanged from the current historic row."""
    stage, target = sql.Identifier("s"), sql.Identifier("t")
    keep = sql.SQL("{col} = CASE WHEN {pos} = ANY(s.{unchanged}) THEN t.{col} ELSE s.{col} END")
    sets = [
        keep.format(
            col=sql.Identifier(name),
            pos=sql.Literal(position + 1),
            unchanged=sql.Identifier(UNCHANGED_COLUMN),
        )
        for position, name in enumerate(layout.column_names)
        if name not in layout.primary_key
    ]
    match = sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(stage, sql.Identifier(k), target, sql.Identifier(k))
        for k in layout.primary_key
    )
    return sql.SQL(
        "UPDATE {stage_table} AS s SET {sets} FROM {schema}.{table} AS t "
        "WHERE s.{unchanged} IS NOT NULL AND {match}"
    ).format(
        stage_table=sql.Identifier(STAGE_TABLE),
        sets=sql.SQL(", ").join(sets),
        schema=sql.Identifier(schema),
        table=sql.Identifier(layout.name),
        unchanged=sql.Identifier(UNCHANGED_COLUMN),
        match=match,
    )


def filled_rows_sql(layout: TableSchema) -> sql.Composed:
    return sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL AND NOT {}").format(
        sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(n)) for n in layout.column_names
        ),
        sql.Identifier(STAGE_TABLE),
        sql.Identifier(UNCHANGED_COLUMN),
        sql.Identifier(DELETED_COLUMN),
    )


def upsert_sql(schema: str, layout: TableSchema) -> sql.Composed:
    """Apply the staging table's rows, each only if newer than the target's row."""
    columns = sql.SQL(", ").join(map(sql.Identifier, row_columns(layout)))
    return _guarded_insert(
        schema, layout, columns, sql.Identifier(STAGE_TABLE), sql.Identifier(VERSION_COLUMN)
    )


def copy_within_sql(
    schema: str, layout: TableSchema, rows: sql.Composable, version: int, upsert: bool = True
) -> sql.Composed:
    """Copy the source table's `rows` (a condition) into the historic table of the same
    database, all at `version`, with the guards of `upsert_sql`; with `upsert=False` a
    plain INSERT (half the work; fails on a key the table holds already)."""
    values = sql.SQL("{}, {}::numeric, false").format(
        sql.SQL(", ").join(map(sql.Identifier, layout.column_names)), sql.Literal(version)
    )
    source = sql.SQL("{}.{}").format(sql.Identifier(layout.schema), sql.Identifier(layout.name))
    return _guarded_insert(schema, layout, values, source, sql.Literal(version), rows, upsert)


def _guarded_insert(
    schema: str,
    layout: TableSchema,
    values: sql.Composable,
    source: sql.Composable,
    version: sql.Composable,
    rows: sql.Composable = ALL_ROWS,
    upsert: bool = True,
) -> sql.Composed:
    """`INSERT ... SELECT values FROM source WHERE rows` of those whose `version` is above
    the table's truncate watermark, in key order; with `upsert`, replacing a row only by a
    newer one."""
    updates = [c for c in row_columns(layout) if c not in layout.primary_key]
    return sql.SQL(
        "INSERT INTO {schema}.{table} AS t ({columns}) SELECT {values} FROM {source} "
        "WHERE ({rows}) AND {version} > coalesce((SELECT version FROM {schema}.{truncations} "
        "WHERE table_name = {name}), 0) ORDER BY {key}{conflict}"
    ).format(
        schema=sql.Identifier(schema),
        table=sql.Identifier(layout.name),
        columns=sql.SQL(", ").join(map(sql.Identifier, row_columns(layout))),
        values=values,
        source=source,
        rows=rows,
        version=version,
        truncations=sql.Identifier(TRUNCATIONS_TABLE),
        name=sql.Literal(layout.name),
        key=sql.SQL(", ").join(
            sql.SQL("{}.{}").format(source, sql.Identifier(k)) for k in layout.primary_key
        ),
        conflict=_on_conflict(layout, updates) if upsert else sql.SQL(""),
    )


def _on_conflict(layout: TableSchema, updates: Sequence[str]) -> sql.Composed:
    return sql.SQL(
        " ON CONFLICT ({key}) DO UPDATE SET ({updates}) = ROW({excluded}) "
        "WHERE t.{version} < excluded.{version}"
    ).format(
        key=sql.SQL(", ").join(map(sql.Identifier, layout.primary_key)),
        updates=sql.SQL(", ").join(map(sql.Identifier, updates)),
        excluded=sql.SQL(", ").join(
            sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in updates
        ),
        version=sql.Identifier(VERSION_COLUMN),
    )


def truncate_sql(schema: str, table: str) -> list[sql.Composed]:
    """Delete rows below the truncate version, and raise the table's watermark to it."""
    return [
        sql.SQL("DELETE FROM {}.{} WHERE {} < %(version)s").format(
            sql.Identifier(schema), sql.Identifier(table), sql.Identifier(VERSION_COLUMN)
        ),
        sql.SQL(
            "INSERT INTO {schema}.{truncations} AS w (table_name, version) "
            "VALUES (%(name)s, %(version)s) ON CONFLICT (table_name) "
            "DO UPDATE SET version = greatest(w.version, excluded.version)"
        ).format(schema=sql.Identifier(schema), truncations=sql.Identifier(TRUNCATIONS_TABLE)),
    ]
