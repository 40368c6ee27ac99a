"""The historic sink's SQL, built by pure functions: the rows a batch is completed from,
the staging table's COPY, the version-guarded upsert, the copy inside the source
database, truncations.

Every write is guarded twice: a row only replaces an older version of itself
(`ON CONFLICT ... WHERE t._version < excluded._version`), and only rows above the table's
truncate watermark (`_cdc_truncations`) are written at all. Every `INSERT ... SELECT` takes
its rows in primary-key order: two of them that meet on keys (the daemon's upsert and a
backfill's chunk) lock those keys in the same order, so they wait for each other instead
of deadlocking. An append-only log is keyed by `_version`: a row already there is the same
row (`ON CONFLICT DO NOTHING`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from psycopg import sql

from cdc.load.chunks import TEXT_OID, VARCHAR_OID
from cdc.protocol import TupleValue
from cdc.schema import (
    COMMIT_TIME_COLUMN,
    DELETED_COLUMN,
    TRUNCATIONS_TABLE,
    VERSION_COLUMN,
    TableSchema,
    source_relation,
)
from cdc.sinks.clickhouse.types import PgType

STAGE_PREFIX = "_cdc_stage_"
GIVEN_PREFIX = "_cdc_key_"
POSITION_COLUMN = "_cdc_position"
ALL_ROWS = sql.SQL("true")


# Values written by the sink's sessions are compressed with lz4 where the server has it
# (PostgreSQL 14+ built with lz4, as Debian's and the official images are): it gives up on
# a value that does not compress at a fraction of pglz's cost (2 KB of random text: ~17 µs
# a row written against ~36 µs), and reads back faster. A column's own COMPRESSION wins.
SESSION_SQL = (
    "SELECT set_config('default_toast_compression', 'lz4', false) FROM pg_settings "
    "WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
)

# The writers' statements that read or mark historic rows by key (donors, tombstones) join
# a batch's keys, a few thousand at most, to the table. Left to choose, the planner hashes
# the whole table when it is small or its statistics lag behind its growth, or merges
# along its whole key index: a cost per batch that grows with the table. The writers'
# sessions probe the key index instead, once per key, in key order.
KEY_PROBES_SQL = ("SET enable_hashjoin = off", "SET enable_mergejoin = off")


def row_columns(layout: TableSchema) -> list[str]:
    """The columns of a `cdc.apply.rowtext` line."""
    return [*layout.column_names, VERSION_COLUMN, DELETED_COLUMN, COMMIT_TIME_COLUMN]


def copy_sql(table: sql.Composable, columns: Sequence[str], binary: bool = False) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        table,
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(" (FORMAT binary)" if binary else ""),
    )


def stage_name(layout: TableSchema, types: Sequence[tuple[int, int]]) -> str:
    """The name of the temporary stage for `layout`'s rows, their historic types being
    `types` (`row_columns` order): another table or another shape, another stage."""
    shape = repr((layout.schema, layout.name, row_columns(layout), tuple(types)))
    return f"{STAGE_PREFIX}{hashlib.blake2b(shape.encode(), digest_size=8).hexdigest()}"


def stage_exists_sql(stage: str) -> sql.Composed:
    """One row: the stage's OID if this session made it, else NULL."""
    return sql.SQL("SELECT to_regclass({})").format(sql.Literal(f"pg_temp.{stage}"))


def stage_sql(schema: str, layout: TableSchema, stage: str) -> list[sql.Composed]:
    """Make the temporary stage `stage` for `layout`'s rows: it lasts as long as the
    session, emptied at each commit (making and dropping it in every transaction cost ~2
    ms of server time). `_is_deleted` keeps its default (false): a backfill's copied rows
    come without it, live. Rows up to a page stay inline and uncompressed
    (`toast_tuple_target`): the stage is read once, and compressing or moving a wide
    value out of line there costs more than the write of the row itself (a 2 KB value
    that does not compress: ~36 µs a row with pglz, ~9 inline)."""
    return [
        sql.SQL(
            "CREATE TEMP TABLE {stage} WITH (toast_tuple_target = 8160) ON COMMIT DELETE ROWS "
            "AS SELECT {columns} FROM {schema}.{table} WITH NO DATA"
        ).format(
            stage=sql.Identifier(stage),
            columns=sql.SQL(", ").join(map(sql.Identifier, row_columns(layout))),
            schema=sql.Identifier(schema),
            table=sql.Identifier(layout.name),
        ),
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT false").format(
            sql.Identifier(stage), sql.Identifier(DELETED_COLUMN)
        ),
    ]


def watermark_sql(schema: str) -> sql.Composed:
    """The truncate watermark of the table named by the one parameter (no row: none)."""
    return sql.SQL("SELECT version FROM {}.{} WHERE table_name = %s").format(
        sql.Identifier(schema), sql.Identifier(TRUNCATIONS_TABLE)
    )


def donors_sql(schema: str, layout: TableSchema) -> sql.Composed:
    """The historic rows of the keys given as parameters, one text array per key column:
    each row with its key's position in the arrays (from 1), then `_version` and every
    column's text as bytea, in the client's encoding (as the stream carries values: read
    in binary, each arrives as bytes without a Python step). One index probe per key (the
    keys' text cast to the columns' types), in key order."""
    given = _given(layout)
    position = sql.Identifier(POSITION_COLUMN)
    return sql.SQL(
        "SELECT k.{position}, h.{version}::text, {values} FROM (SELECT * FROM unnest({arrays}) "
        "WITH ORDINALITY AS u({given}, {position}) ORDER BY {order}) AS k "
        "JOIN {schema}.{table} AS h ON {match}"
    ).format(
        position=position,
        version=sql.Identifier(VERSION_COLUMN),
        values=sql.SQL(", ").join(
            sql.SQL("convert_to(h.{}::text, pg_client_encoding())").format(sql.Identifier(c))
            for c in layout.column_names
        ),
        arrays=sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in given),
        given=sql.SQL(", ").join(given),
        order=_key_order(layout, given),
        schema=sql.Identifier(schema),
        table=sql.Identifier(layout.name),
        match=_key_match(layout, given),
    )


def tombstones_sql(schema: str, layout: TableSchema) -> sql.Composed:
    """Mark the historic rows of the keys given as parameters deleted, keeping their
    values, each only if older than its tombstone: one text array per key column, then
    the versions and the commit times (text arrays). For tombstones completed from their
    own key's row (it holds their values already): no value is written again."""
    given = _given(layout)
    version, deleted = sql.Identifier(VERSION_COLUMN), sql.Identifier(DELETED_COLUMN)
    commit_time = sql.Identifier(COMMIT_TIME_COLUMN)
    return sql.SQL(
        "UPDATE {schema}.{table} AS h SET {version} = k.{version}, {deleted} = true, "
        "{commit_time} = k.{commit_time} FROM (SELECT * FROM unnest({arrays}, %s::numeric[], "
        "%s::timestamptz[]) AS u({given}, {version}, {commit_time}) ORDER BY {order}) AS k "
        "WHERE {match} AND h.{version} < k.{version}"
    ).format(
        schema=sql.Identifier(schema),
        table=sql.Identifier(layout.name),
        version=version,
        deleted=deleted,
        commit_time=commit_time,
        arrays=sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in given),
        given=sql.SQL(", ").join(given),
        order=_key_order(layout, given),  # rows locked in key order, as the upserts lock them
        match=_key_match(layout, given),
    )


def array_literal(values: Sequence[TupleValue]) -> str:
    """Text values (or None: NULL) as one array literal, `{"a","b",NULL}`: the parameter of
    a `%s::type[]` for many keys, versions or times, joined at once (psycopg's list dumper
    spends a Python step on every element)."""
    if not values:
        return "{}"
    try:
        joined = b'","'.join(values)  # type: ignore[arg-type]
    except TypeError:  # a NULL (or a value that is not text)
        return "{" + ",".join(map(_element, values)) + "}"
    if b"\\" in joined or b'"' in joined:
        return "{" + ",".join(map(_element, values)) + "}"
    return '{"' + joined.decode() + '"}'


def _element(value: TupleValue) -> str:
    if value is None:
        return "NULL"
    if not isinstance(value, bytes):
        raise ValueError(f"a value is not text: {value!r}")
    return '"' + value.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'


def _given(layout: TableSchema) -> list[sql.Identifier]:
    return [sql.Identifier(f"{GIVEN_PREFIX}{i}") for i in range(len(layout.primary_key))]


def _typed_keys(
    layout: TableSchema, given: Sequence[sql.Identifier], alias: str
) -> list[tuple[str, sql.Composed]]:
    """Each key column with the given key's text (`alias.given`) cast to its type."""
    types = {c.name: c.pg_type for c in layout.columns}
    return [
        (k, sql.SQL("CAST({}.{} AS {})").format(sql.SQL(alias), g, sql.SQL(types[k])))
        for k, g in zip(layout.primary_key, given, strict=True)
    ]


def _key_order(layout: TableSchema, given: Sequence[sql.Identifier]) -> sql.Composed:
    """The given keys (`u`) in the table's key order."""
    return sql.SQL(", ").join(typed for _, typed in _typed_keys(layout, given, "u"))


def _key_match(layout: TableSchema, given: Sequence[sql.Identifier]) -> sql.Composed:
    """Historic rows (`h`) whose key is the given key (`k`): one index probe per key."""
    return sql.SQL(" AND ").join(
        sql.SQL("h.{} = {}").format(sql.Identifier(k), typed)
        for k, typed in _typed_keys(layout, given, "k")
    )


def upsert_sql(schema: str, layout: TableSchema, stage: str) -> sql.Composed:
    """Apply the rows of the stage `stage`, each only if newer than the target's row."""
    columns = sql.SQL(", ").join(map(sql.Identifier, row_columns(layout)))
    return _guarded_insert(
        schema, layout, columns, sql.Identifier(stage), sql.Identifier(VERSION_COLUMN)
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
    return _guarded_insert(schema, layout, values, source, sql.Literal(version), rows, upsert,
                           source_relation(layout))  # fmt: skip


def _guarded_insert(
    schema: str,
    layout: TableSchema,
    values: sql.Composable,
    source: sql.Composable,
    version: sql.Composable,
    rows: sql.Composable = ALL_ROWS,
    upsert: bool = True,
    read: sql.Composable | None = None,
) -> sql.Composed:
    """`INSERT ... SELECT values FROM source WHERE rows` of those whose `version` is above
    the table's truncate watermark, in key order; with `upsert`, replacing a row only by a
    newer one. `read`: what the FROM clause reads, when not `source` (`ONLY source`)."""
    updates = [c for c in row_columns(layout) if c not in layout.target_key]
    return sql.SQL(
        "INSERT INTO {schema}.{table} AS t ({columns}) SELECT {values} FROM {read} "
        "WHERE ({rows}) AND {version} > coalesce((SELECT version FROM {schema}.{truncations} "
        "WHERE table_name = {name}), 0) ORDER BY {key}{conflict}"
    ).format(
        schema=sql.Identifier(schema),
        table=sql.Identifier(layout.name),
        columns=sql.SQL(", ").join(map(sql.Identifier, row_columns(layout))),
        values=values,
        read=read if read is not None else source,
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
    types = {c.name: c.type_oid for c in layout.columns}
    return sql.SQL(
        " ON CONFLICT ({key}) DO UPDATE SET ({updates}) = ROW({excluded}) "
        "WHERE t.{version} < excluded.{version}"
    ).format(
        key=sql.SQL(", ").join(map(sql.Identifier, layout.primary_key)),
        updates=sql.SQL(", ").join(map(sql.Identifier, updates)),
        excluded=sql.SQL(", ").join(_new_value(c, types.get(c)) for c in updates),
        version=sql.Identifier(VERSION_COLUMN),
    )


def _new_value(column: str, type_oid: int | None) -> sql.Composed:
    """A column's value in the upsert. A text or bytea value equal, byte for byte, to the
    row's own is kept as the row holds it: a value stored out of line (TOAST) is then not
    written again (Postgres keeps the pointer), which spares a rewrite of the value and
    its WAL to every update that left it unchanged at the source (completed from this row,
    `cdc.sinks.historic.fill`). Equality is checked on lengths first: a value of another
    length is never read back."""
    name = sql.Identifier(column)
    if type_oid == PgType.BYTEA:
        equal = sql.SQL("t.{0} = excluded.{0}").format(name)
    elif type_oid in (TEXT_OID, VARCHAR_OID):
        equal = sql.SQL('t.{0} = excluded.{0} COLLATE "C"').format(name)
    else:
        return sql.SQL("excluded.{}").format(name)
    return sql.SQL("CASE WHEN {} THEN t.{} ELSE excluded.{} END").format(equal, name, name)


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
