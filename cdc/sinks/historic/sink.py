"""The historic sink: versioned upserts into a Postgres schema, one transaction per batch.

Before any sink applies a batch, `complete` fills the values the stream did not resend
(unchanged TOAST, the non-key columns of tombstones) into it, from the historic row of the
key the row had before the batch changed it (`TableBatch.fill_from`), in a transaction of
its own: every sink then receives complete rows, and none depends on another having run.
`apply`: truncations first (rows below the truncate's version are deleted and the version
is kept as the table's watermark); then the rows are COPYed (text format, values exactly
as Postgres sent them) into a temp staging table, and one `INSERT ... ON CONFLICT DO
UPDATE ... WHERE target._version < excluded._version` applies them (a large batch split by
key over several connections). The SQL is built in `cdc.sinks.historic.sql`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict

from cdc.apply import rowtext
from cdc.apply.batch import Batch, TableBatch, TableName
from cdc.classify import postgres_error
from cdc.errors import CdcError, ErrorKind
from cdc.ops.logs import get_logger
from cdc.ops.settings import redact_url
from cdc.protocol import TupleValue
from cdc.schema import COMMIT_TIME_COLUMN, DELETED_COLUMN, VERSION_COLUMN, TableSchema
from cdc.sinks import ddl
from cdc.sinks.base import CopiedRows, CopyFormat
from cdc.sinks.historic import fill
from cdc.sinks.historic.sql import (
    STAGE_TABLE,
    copy_sql,
    copy_within_sql,
    donors_sql,
    row_columns,
    truncate_sql,
    upsert_sql,
    watermark_sql,
)
from cdc.stream.session import canonical_dsn

FIRST_USER_OID = 16384  # FirstNormalObjectId: built-in types are below
# After a batch whose new rows were found in the table already (a replay, a backfill, a
# key deleted and inserted again), this many batches of the table go the staged way only.
DIRECT_INSERT_BACKOFF = 16
DDL_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
PARALLEL_MIN_ROWS = 2_000  # smaller batches are written on one connection

_log = get_logger()


class HistoricSink:
    """Applies batches to `<schema>.<table>` in Postgres. See `cdc.sinks.base.Sink`."""

    name = "historic"

    def __init__(self, dsn: str, schema: str, writers: int = 1) -> None:
        """`writers`: connections that write a large batch's rows at once, each a share
        of the keys in its own transaction (the batch is durable when all committed)."""
        self.schema = schema
        self._dsn = dsn
        self._conns: list[psycopg.Connection[Any] | None] = [None] * max(1, writers)
        self._pool: ThreadPoolExecutor | None = None
        self._columns: dict[TableName, list[str]] = {}
        self._types: dict[TableName, dict[str, tuple[int, int]]] = {}
        self._direct_backoff: dict[TableName, int] = {}

    def _connection(self, writer: int = 0) -> psycopg.Connection[Any]:
        conn = self._conns[writer]
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(
                    canonical_dsn(self._dsn), application_name=f"cdc historic writer {writer}"
                )
            except psycopg.Error as exc:
                raise CdcError(
                    ErrorKind.SINK_CONNECTION,
                    f"cannot connect to the historic database {redact_url(self._dsn)}: "
                    f"{redact_url(str(exc).strip())}",
                ) from exc
            self._conns[writer] = conn
            if writer == 0:
                self._columns.clear()
                self._types.clear()
        return conn

    def _drop(self, writer: int) -> None:
        conn = self._conns[writer]
        if conn is not None:
            conn.close()
            self._conns[writer] = None

    def close(self) -> None:
        for writer in range(len(self._conns)):
            self._drop(writer)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def prepare(self, tables: Sequence[TableSchema]) -> None:
        with self._transaction() as conn:
            for table in tables:
                self._ensure(conn, (table.schema, table.name), table)

    @contextmanager
    def _transaction(self, writer: int = 0) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on the historic database; a lost connection is a sink
        connection failure (retried), and the next write reconnects."""
        conn = self._connection(writer)
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            error = postgres_error(exc, ErrorKind.SINK_CONNECTION, "historic write failed")
            if error.kind is ErrorKind.SINK_CONNECTION:
                # Only this writer's connection: this may run in a pool thread, which
                # cannot shut its own pool down. The others fail on their next use.
                self._drop(writer)
            raise error from exc

    def complete(self, batch: Batch) -> None:
        """Fill the values the stream did not resend into `batch`'s rows, from the historic
        rows as they were before the batch (it is applied after): one transaction that
        writes no row. A value no historic row holds is NULL, with a warning."""
        work = [
            (table, table.schema)
            for table in batch.tables.values()
            if rowtext.shared_row_text(table).incomplete
        ]
        if not work:
            return
        with self._transaction() as conn:
            for table, layout in work:
                self._ensure(conn, (layout.schema, layout.name), layout)
                self._complete(conn, table, layout)

    def apply(self, batch: Batch) -> None:
        """Targets and truncations first, then the rows: all in one transaction, or for a
        large batch split by key over the writers' connections, written at once. The
        batch is complete (`complete`)."""
        work = [(table, table.schema) for table in batch.tables.values()]
        with self._transaction() as conn:
            for table, layout in work:
                self._ensure(conn, (layout.schema, layout.name), layout)
                self._truncate(conn, table, layout)
            writers = len(self._conns)
            # A batch that moved rows to other keys commits in one transaction: a replay
            # after a partial commit could find neither a moved row's old key nor its new
            # one holding the values it needs (`TableBatch.fill_from`).
            moved = any(t.fill_from for t, _ in work)
            if writers == 1 or moved or sum(len(t.rows) for t, _ in work) < PARALLEL_MIN_ROWS:
                for table, layout in work:
                    self._apply_rows(conn, table, layout, rowtext.shared_row_text(table))
                return
        shares = [
            [(t, layout, rowtext.shared_row_text(t).share(k, writers)) for t, layout in work]
            for k in range(writers)
        ]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(writers - 1, thread_name_prefix="cdc-historic")
        others = [self._pool.submit(self._write_share, k, shares[k]) for k in range(1, writers)]
        try:
            self._write_share(0, shares[0])
        finally:
            errors = [exc for future in others if (exc := future.exception()) is not None]
        if errors:
            raise errors[0]

    def _write_share(
        self, writer: int, share: list[tuple[TableBatch, TableSchema, rowtext.RowText]]
    ) -> None:
        with self._transaction(writer) as conn:
            for table, layout, text in share:
                self._apply_rows(conn, table, layout, text)

    def _ensure(self, conn: psycopg.Connection[Any], name: TableName, layout: TableSchema) -> None:
        known = self._columns.get(name)
        if known is None:
            # `CREATE ... IF NOT EXISTS` is not safe against a concurrent session doing the
            # same (the daemon and a backfill): take turns, until this transaction ends.
            conn.execute(DDL_LOCK_SQL, (f"cdc historic {self.schema}",))
            conn.execute(ddl.historic_schema(self.schema))
            conn.execute(ddl.historic_truncations_table(self.schema))
            types = self._target_columns(conn, layout.name)
            if types:
                self._check_key(conn, layout)
                self._add_commit_time(conn, layout.name)
            if not types:
                conn.execute(ddl.historic_table(self.schema, layout))
                conn.execute(ddl.historic_current_view(self.schema, layout))
                types = {c.name: (c.type_oid, c.type_modifier) for c in layout.columns}
            known = list(types)
            self._columns[name] = known
            self._types[name] = types
        self._check_types(layout)
        missing = [c for c in layout.columns if c.name not in known]
        if missing:
            conn.execute(DDL_LOCK_SQL, (f"cdc historic {self.schema}",))
            for column in missing:
                conn.execute(ddl.historic_add_column(self.schema, layout.name, column))
                known.append(column.name)
                self._types[name][column.name] = (column.type_oid, column.type_modifier)
            conn.execute(ddl.historic_current_view(self.schema, _with_columns(layout, known)))

    def _check_types(self, layout: TableSchema) -> None:
        """Stop on a column whose built-in type changed at the source: the targets cannot
        follow by themselves, and a silent coercion could change values."""
        types = self._types[(layout.schema, layout.name)]
        for column in layout.columns:
            target = types.get(column.name)
            if target is None or (column.type_oid, column.type_modifier) == target:
                continue
            if column.type_oid >= FIRST_USER_OID or target[0] >= FIRST_USER_OID:
                continue  # user types: their OIDs differ between databases
            raise CdcError(
                ErrorKind.SCHEMA,
                f"column {column.name!r} of {layout.qualified_name} changed type at the source "
                f"(now {column.pg_type}); the targets keep the old type. Change it in both "
                f"(`ALTER TABLE {self.schema}.{layout.name} ALTER COLUMN ... TYPE ...` and "
                "`ALTER TABLE ... MODIFY COLUMN` in ClickHouse), or drop both target tables "
                f"and run `cdc backfill {layout.name}`; then restart the daemon",
                table=(layout.schema, layout.name),
            )

    def _check_key(self, conn: psycopg.Connection[Any], layout: TableSchema) -> None:
        """Set aside a table whose kind changed (it gained or lost its primary key): its
        historic copy is keyed otherwise, so its rows cannot be written by the new key."""
        row = conn.execute(
            "SELECT array_agg(a.attname::text) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
            "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary",
            (self.schema, layout.name),
        ).fetchone()
        target = set(row[0] or ()) if row is not None else set()
        if target and target != set(layout.target_key):
            keyed_by = ", ".join(sorted(target))
            raise CdcError(
                ErrorKind.NO_KEY,
                f"{layout.qualified_name} is now keyed by ({', '.join(layout.target_key)}) "
                f"but its historic copy {self.schema}.{layout.name} by ({keyed_by}): it gained "
                "or lost its primary key. Drop its target tables (historic and ClickHouse, "
                f"with their _current views) and run `cdc backfill {layout.name}`, then "
                "restart the daemon",
                table=(layout.schema, layout.name),
            )

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

    def _truncate(
        self, conn: psycopg.Connection[Any], table: TableBatch, layout: TableSchema
    ) -> None:
        if table.truncate_version is not None:
            params = {"name": layout.name, "version": table.truncate_version}
            for statement in truncate_sql(self.schema, layout.name):
                conn.execute(statement, params)

    def _apply_rows(
        self,
        conn: psycopg.Connection[Any],
        table: TableBatch,
        layout: TableSchema,
        text: rowtext.RowText,
    ) -> None:
        if text.incomplete:
            raise ValueError(f"{layout.qualified_name}: a batch is completed before it is applied")
        if not text.lines:
            return
        staged = text.lines
        inserted, others, lowest = text.by_insertion()
        if lowest is not None and self._insert_new(
            conn, layout, row_columns(layout), b"".join(inserted), lowest
        ):
            staged = others
        if not staged:
            return
        self._create_stage(conn, layout)
        stage = sql.Identifier(STAGE_TABLE)
        with conn.cursor() as cur, cur.copy(copy_sql(stage, row_columns(layout))) as pipe:
            pipe.write(b"".join(staged))
        conn.execute(upsert_sql(self.schema, layout))
        conn.execute(sql.SQL("DROP TABLE {}").format(stage))

    def _complete(
        self, conn: psycopg.Connection[Any], table: TableBatch, layout: TableSchema
    ) -> None:
        """Fill the values the stream did not resend (unchanged TOAST, a tombstone's
        columns) from historic rows, into the batch (`cdc.sinks.historic.fill`): every sink
        then writes complete rows."""
        text = rowtext.shared_row_text(table)
        if not text.incomplete:
            return
        planned = fill.plan(table, text.incomplete)
        keys = planned.donor_keys
        arrays = [[_text(key[i]) for key in keys] for i in range(len(layout.primary_key))]
        with conn.cursor() as cur:
            cur.adapters.register_loader("text", _RawText)
            found = cur.execute(donors_sql(self.schema, layout), arrays).fetchall()
        donors = {keys[row[0] - 1]: fill.Donor(int(row[1]), row[2:]) for row in found}
        completed, unfilled = fill.fill(table, planned, donors)
        if unfilled:
            _log.warning(
                "unchanged_values_unknown", table=layout.qualified_name, rows=unfilled,
                hint="rows whose TOASTed values the stream did not resend and historic does "
                f"not hold; they are stored as NULL: run `cdc backfill {layout.name}`",
            )  # fmt: skip
        rowtext.add_completed(table, text, completed)

    def _insert_new(
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
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(copy_sql(target, columns)) as pipe,
            ):
                pipe.write(data)
        except psycopg.errors.UniqueViolation:
            self._direct_backoff[name] = DIRECT_INSERT_BACKOFF
            return False
        return True

    def _create_stage(self, conn: psycopg.Connection[Any], layout: TableSchema) -> None:
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {stage} ON COMMIT DROP AS "
                "SELECT {columns} FROM {schema}.{table} WITH NO DATA"
            ).format(
                stage=sql.Identifier(STAGE_TABLE),
                columns=sql.SQL(", ").join(map(sql.Identifier, row_columns(layout))),
                schema=sql.Identifier(self.schema),
                table=sql.Identifier(layout.name),
            )
        )
        # A backfill's copied rows come without it: live.
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT false").format(
                sql.Identifier(STAGE_TABLE), sql.Identifier(DELETED_COLUMN)
            )
        )

    def in_database(self, dsn: str) -> bool:
        """True if this sink writes into the database `dsn` names (same server, port and
        database name; the user and the options may differ)."""
        return _database_of(self._dsn) == _database_of(dsn)

    def copy_within_sql(
        self, layout: TableSchema, rows: sql.Composable, version: int, upsert: bool
    ) -> sql.Composed:
        """`copy_within_sql` for this sink's schema: run it on a source connection."""
        return copy_within_sql(self.schema, layout, rows, version, upsert)

    def copy_format(self, layout: TableSchema) -> CopyFormat:
        return CopyFormat.TEXT

    def apply_copy(
        self, layout: TableSchema, copies: Sequence[CopiedRows], version: int
    ) -> list[int]:
        """Live rows in COPY text format (the layout's columns, then `_version`, which is
        `version` in every row), straight from source COPYs: no value is touched in
        Python. Same guard as `apply`; a range of keys the table does not hold yet (an
        initial load) is copied in without the staged upsert. Binary rows are refused."""
        refused = [i for i, c in enumerate(copies) if c.format is not CopyFormat.TEXT]
        data = b"".join(c.data for c in copies if c.format is CopyFormat.TEXT)
        if not data:
            return refused
        columns = [*layout.column_names, VERSION_COLUMN]
        with self._transaction() as conn:
            self._ensure(conn, (layout.schema, layout.name), layout)
            if self._insert_new(conn, layout, columns, data, version):
                return refused
            self._create_stage(conn, layout)
            copy = copy_sql(sql.Identifier(STAGE_TABLE), columns)
            with conn.cursor() as cur, cur.copy(copy) as pipe:
                pipe.write(data)
            conn.execute(upsert_sql(self.schema, layout))
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(STAGE_TABLE)))
        return refused


class _RawText(Loader):
    """Text as the bytes Postgres sent, as the stream carries values."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def _text(value: TupleValue) -> str:
    if not isinstance(value, bytes):
        raise ValueError(f"a key value is not text: {value!r}")
    return value.decode()


def _database_of(dsn: str) -> tuple[object, ...]:
    params = conninfo_to_dict(dsn)
    return tuple(params.get(key) for key in ("host", "hostaddr", "port", "dbname"))


def _with_columns(layout: TableSchema, names: list[str]) -> TableSchema:
    """`layout` restricted/ordered to `names` that it knows (for the current view)."""
    from dataclasses import replace

    by_name = {c.name: c for c in layout.columns}
    columns = tuple(by_name[n] for n in names if n in by_name)
    return replace(layout, columns=columns)
