"""The historic sink's SQL, built by pure functions: the staging table's COPY and fill,
the version-guarded upsert, the copy inside the source database, truncations.

Every write is guarded twice: a row only replaces an older version of itself
(`ON CONFLICT ... WHERE t._version < excluded._version`), and only rows above the table's
truncate watermark (`_cdc_truncations`) are written at all. Every `INSERT ... SELECT` takes
its rows in primary-key order: two of them that meet on keys (the daemon's upsert and a
backfill's chunk) lock those keys in the same order, so they wait for each other instead
of deadlocking. An append-only log is keyed by `_version`: a row already there is the same
row (`ON CONFLICT DO NOTHING`).
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from cdc.apply import rowtext
from cdc.apply.batch import NO_BOUND, FillSource, Key, TableBatch
from cdc.protocol import UNCHANGED_TOAST
from cdc.schema import (
    COMMIT_TIME_COLUMN,
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    TableSchema,
)

STAGE_TABLE = "_cdc_stage"
UNCHANGED_COLUMN = "_cdc_unchanged"
FILL_TABLE = "_cdc_fill"
TO_PREFIX = "_cdc_to_"
FROM_PREFIX = "_cdc_from_"
RANK_COLUMN = "_cdc_rank"
LOWEST_COLUMN = "_cdc_lowest"
BOUND_COLUMN = "_cdc_bound"
ALL_ROWS = sql.SQL("true")


def fill_columns(layout: TableSchema) -> list[str]:
    """The columns of `FILL_TABLE`: a staged row's key, a rank, the key of a historic row
    that may hold its unchanged values, and the range its `_version` must be in."""
    width = range(len(layout.primary_key))
    return [
        *(f"{TO_PREFIX}{i}" for i in width),
        RANK_COLUMN,
        *(f"{FROM_PREFIX}{i}" for i in width),
        LOWEST_COLUMN,
        BOUND_COLUMN,
    ]


def fill_table_sql(schema: str, layout: TableSchema) -> list[sql.Composed]:
    """Create `FILL_TABLE` for `layout` (dropped at commit)."""
    key = layout.primary_key
    names = fill_columns(layout)
    keys = [*key, *key]
    key_columns = [*names[: len(key)], *names[len(key) + 1 : 2 * len(key) + 1]]
    return [
        sql.SQL(
            "CREATE TEMP TABLE {fill} ON COMMIT DROP AS SELECT {columns} "
            "FROM {schema}.{table} WITH NO DATA"
        ).format(
            fill=sql.Identifier(FILL_TABLE),
            columns=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(sql.Identifier(k), sql.Identifier(c))
                for k, c in zip(keys, key_columns, strict=True)
            ),
            schema=sql.Identifier(schema),
            table=sql.Identifier(layout.name),
        ),
        sql.SQL(
            "ALTER TABLE {} ADD COLUMN {} int, ADD COLUMN {} numeric, ADD COLUMN {} numeric"
        ).format(*map(sql.Identifier, (FILL_TABLE, RANK_COLUMN, LOWEST_COLUMN, BOUND_COLUMN))),
    ]


def incomplete_rows(table: TableBatch, keys: Sequence[Key]) -> bytes:
    """COPY text of rows with values to fill: NULL in their place, and the int2[] of the
    positions to take from a historic row, after `_version`, `_is_deleted` and
    `_commit_time` (not needed to fill: NULL)."""
    lines = []
    for key in keys:
        image = table.rows[key]
        values = image.values
        unchanged = [b"%d" % (i + 1) for i, v in enumerate(values) if v is UNCHANGED_TOAST]
        row = rowtext.escaped_fields(tuple(None if v is UNCHANGED_TOAST else v for v in values))
        marker = b"{%s}" % b",".join(unchanged)
        lines.append(b"%s\t%d\t%d\t\\N\t%s\n" % (row, image.version, image.deleted, marker))
    return b"".join(lines)


def fill_sources(table: TableBatch, keys: Sequence[Key]) -> bytes:
    """COPY text of `FILL_TABLE` for these rows (`fill_columns`): where each row's
    unchanged values are (`TableBatch.fill_from`; by default its own key's row)."""
    lines = []
    fill_from = table.fill_from
    for key in keys:
        to = rowtext.escaped_fields(key)
        sources = fill_from.get(key) or (FillSource(key, 0, NO_BOUND),)
        for rank, (source, lowest, bound) in enumerate(sources):
            fields = (to, rank, rowtext.escaped_fields(source), lowest, bound)
            lines.append(b"%s\t%d\t%s\t%d\t%d\n" % fields)
    return b"".join(lines)


def redirected(table: TableBatch, keys: Sequence[Key]) -> bool:
    """True if one of these rows takes its unchanged values from elsewhere than its own
    key's historic row."""
    fill_from = table.fill_from
    return any(key in fill_from for key in keys)


def row_columns(layout: TableSchema) -> list[str]:
    """The columns of a `cdc.apply.rowtext` line."""
    return [*layout.column_names, VERSION_COLUMN, DELETED_COLUMN, COMMIT_TIME_COLUMN]


def copy_sql(table: sql.Composable, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        table, sql.SQL(", ").join(map(sql.Identifier, columns))
    )


def watermark_sql(schema: str) -> sql.Composed:
    """The truncate watermark of the table named by the one parameter (no row: none)."""
    return sql.SQL("SELECT version FROM {}.{} WHERE table_name = %s").format(
        sql.Identifier(schema), sql.Identifier(TRUNCATIONS_TABLE)
    )


def fill_sql(schema: str, layout: TableSchema, redirected: bool, floor: int = 0) -> sql.Composed:
    """Take values marked unchanged from a historic row: the staged row's own key's, or,
    if `redirected`, the first of its `FILL_TABLE` rows whose historic row has a version
    in range. A row's marker becomes empty once filled. Historic rows below `floor` (the
    version of a truncation in the batch, not yet applied) are not taken."""
    key = layout.primary_key
    above = sql.SQL(" AND {}.{} >= {}").format(
        sql.Identifier("t" if not redirected else "h"),
        sql.Identifier(VERSION_COLUMN),
        sql.Literal(floor),
    )
    if not redirected:
        match = sql.SQL(" AND ").join(
            sql.SQL("s.{k} = t.{k}").format(k=sql.Identifier(k)) for k in key
        )
        own = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(layout.name))
        return _fill_from(layout, match + above if floor else match, own)
    columns = fill_columns(layout)
    to = [sql.Identifier(c) for c in columns[: len(key)]]
    sources = [sql.Identifier(c) for c in columns[len(key) + 1 : 2 * len(key) + 1]]
    version = sql.Identifier(VERSION_COLUMN)
    joined = sql.SQL(" AND ").join(
        sql.SQL("h.{k} = f.{f}").format(k=sql.Identifier(k), f=f)
        for k, f in zip(key, sources, strict=True)
    )
    candidates = sql.SQL(
        "(SELECT DISTINCT ON ({to}) {to_f}, h.* FROM {fill} AS f JOIN {schema}.{table} AS h "
        "ON {joined} AND h.{version} >= f.{lowest} AND h.{version} < f.{bound}{above} "
        "ORDER BY {to}, f.{rank})"
    ).format(
        above=above if floor else sql.SQL(""),
        to=sql.SQL(", ").join(to),
        to_f=sql.SQL(", ").join(sql.SQL("f.{}").format(c) for c in to),
        fill=sql.Identifier(FILL_TABLE),
        schema=sql.Identifier(schema),
        table=sql.Identifier(layout.name),
        joined=joined,
        version=version,
        lowest=sql.Identifier(LOWEST_COLUMN),
        bound=sql.Identifier(BOUND_COLUMN),
        rank=sql.Identifier(RANK_COLUMN),
    )
    match = sql.SQL(" AND ").join(
        sql.SQL("s.{k} = t.{c}").format(k=sql.Identifier(k), c=c)
        for k, c in zip(key, to, strict=True)
    )
    return _fill_from(layout, match, candidates)


def _fill_from(layout: TableSchema, match: sql.Composable, rows: sql.Composable) -> sql.Composed:
    keep = sql.SQL("{col} = CASE WHEN {pos} = ANY(s.{unchanged}) THEN t.{col} ELSE s.{col} END")
    unchanged = sql.Identifier(UNCHANGED_COLUMN)
    sets = [
        keep.format(col=sql.Identifier(name), pos=sql.Literal(position + 1), unchanged=unchanged)
        for position, name in enumerate(layout.column_names)
        if name not in layout.primary_key
    ]
    sets.append(sql.SQL("{} = '{{}}'").format(unchanged))
    return sql.SQL(
        "UPDATE {stage_table} AS s SET {sets} FROM {rows} AS t "
        "WHERE cardinality(s.{unchanged}) > 0 AND {match}"
    ).format(
        stage_table=sql.Identifier(STAGE_TABLE),
        sets=sql.SQL(", ").join(sets),
        rows=rows,
        unchanged=unchanged,
        match=match,
    )


def unfilled_sql() -> sql.Composed:
    """The live staged rows whose unchanged values no historic row held (they stay NULL)."""
    return sql.SQL("SELECT count(*) FROM {} WHERE cardinality({}) > 0 AND NOT {}").format(
        sql.Identifier(STAGE_TABLE),
        sql.Identifier(UNCHANGED_COLUMN),
        sql.Identifier(DELETED_COLUMN),
    )


def filled_rows_sql(layout: TableSchema) -> sql.Composed:
    """The staged rows' values as text, after the fill."""
    return sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(n)) for n in layout.column_names
        ),
        sql.Identifier(STAGE_TABLE),
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
    values = sql.SQL("{}, {}::numeric, false, NULL").format(
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
    updates = [c for c in row_columns(layout) if c not in layout.target_key]
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
            sql.SQL("{}.{}").format(source, sql.Identifier(k)) for k in layout.target_key
        ),
        conflict=_on_conflict(layout, updates) if upsert else sql.SQL(""),
    )


def _on_conflict(layout: TableSchema, updates: Sequence[str]) -> sql.Composed:
    if layout.append_only:
        return sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(sql.Identifier(VERSION_COLUMN))
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
