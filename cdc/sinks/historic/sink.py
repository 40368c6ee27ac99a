"""The historic sink: versioned upserts into a Postgres schema, one transaction per batch.

Before any sink applies a batch, `complete` fills the values the stream did not resend
(unchanged TOAST, the non-key columns of tombstones) into it, from the row of the key the
row had before the batch changed it (`TableBatch.fill_from`): its image in an earlier
batch not yet written (`cdc.apply.unwritten`), else its historic row, read in a
transaction of its own on a connection of its own, while earlier batches are written.
Every sink then receives complete rows, and none depends on another having run. The
targets of a batch's tables are made or widened there too, once the batches before it
are written, and the rows are dealt out to the writers (`cdc.sinks.historic.shares`).
`apply`: truncations first (rows below the truncate's version are deleted and the version
is kept as the table's watermark); then each writer's share (a large batch is split by
key over several connections, `cdc.sinks.historic.writers`), written by
`cdc.sinks.historic.rowwriter`: tombstones marked deleted, rows new at the source COPYed
straight in, the others staged and applied by one `INSERT ... ON CONFLICT DO UPDATE ...
WHERE target._version < excluded._version`. The SQL is built in
`cdc.sinks.historic.sql`; the tables are made and checked by
`cdc.sinks.historic.targets`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cdc.apply import rowtext
from cdc.apply.batch import Batch, Key, TableBatch
from cdc.apply.unwritten import Unwritten
from cdc.errors import backfill_command
from cdc.load import jobstate
from cdc.ops.logs import get_logger
from cdc.schema import VERSION_COLUMN, TableSchema
from cdc.sinks.base import CopiedRows, CopyFormat
from cdc.sinks.historic import fill
from cdc.sinks.historic.rowwriter import RowWriter
from cdc.sinks.historic.shares import Share, shares
from cdc.sinks.historic.sql import (
    array_literal,
    copy_within_sql,
    donors_sql,
    truncate_sql,
    watermark_sql,
)
from cdc.sinks.historic.targets import HistoricTargets
from cdc.sinks.historic.writers import Writers
from cdc.versions import snapshot_version

PARALLEL_MIN_ROWS = 2_000  # smaller batches are written on one connection

_log = get_logger()


class HistoricSink:
    """Applies batches to `<schema>.<table>` in Postgres. See `cdc.sinks.base.Sink`."""

    name = "historic"

    def __init__(self, dsn: str, schema: str, writers: int = 1) -> None:
        """`writers`: connections that write a large batch's rows at once, each a share
        of the keys in its own transaction (the batch is durable when all committed)."""
        self.schema = schema
        self._targets = HistoricTargets(schema)
        self._writers = Writers(dsn, writers, self._targets.forget)
        # Completes batches (reads only, and makes targets) while earlier ones are written.
        # Its reconnecting forgets nothing: the writers may be using what the targets know.
        # Held while a completion uses it: `close` (also called on the writers' thread, on
        # a retry) never closes it under a query.
        self._reader = Writers(dsn, 1, lambda: None, role="reader")
        self._reading = threading.Lock()
        self._rows = RowWriter(schema, self._targets)
        # Per completed batch (by identity, with the batch: its id is not reused while it
        # is here), what each writer writes of it (`shares`): made by `complete`, ahead
        # of the writes. A batch without an entry is dealt out by `apply`, its tombstones
        # written with their values.
        self._planned: dict[int, tuple[Batch, list[list[tuple[TableSchema, Share]]]]] = {}
        self._copies_recorded = False  # the tables that record copies were found

    def close(self) -> None:
        self._planned = {}
        self._writers.close()
        with self._reading:
            self._reader.close()

    def prepare(self, tables: Sequence[TableSchema]) -> None:
        with self._writers.transaction() as conn:
            for table in tables:
                self._targets.ensure(conn, table)

    def complete(self, batch: Batch, unwritten: Unwritten | None = None) -> None:
        """Make the targets of `batch`'s tables, then fill the values the stream did not
        resend into its rows, from the rows as they were before the batch (it is applied
        after): from `unwritten`'s batches (completed before this one, not yet written),
        else from historic. One transaction that writes no row. A value no row holds is
        NULL, with a warning. Then deal the rows out to the writers (`shares`)."""
        kept = self._complete_batch(batch, unwritten)
        self._planned[id(batch)] = (batch, self._shares(batch, kept))

    def _complete_batch(self, batch: Batch, unwritten: Unwritten | None) -> set[int]:
        """`complete`'s targets and fill; the identities of the tombstones whose historic
        row holds their values (`fill.Filled.kept`)."""
        earlier = unwritten.batches() if unwritten is not None else ()
        tables = list(batch.tables.values())
        new = not all(self._targets.knows(t.schema) for t in tables)
        if new and earlier and unwritten is not None:
            unwritten.wait_written()  # made here: no batch in flight may use them first
            earlier = ()
        work = [t for t in tables if rowtext.shared_row_text(t).incomplete]
        kept: set[int] = set()
        if not (new or work):
            return kept
        with self._reading, self._reader.transaction() as conn:
            for table in tables:
                self._targets.ensure(conn, table.schema)
            for table in work:
                older = [t for b in earlier if (t := b.tables.get(table.name)) is not None]
                kept.update(self._complete(conn, table, older))
        return kept

    def _shares(self, batch: Batch, kept: set[int]) -> list[list[tuple[TableSchema, Share]]]:
        """Per writer, its share of each table's rows: one writer for a small batch, or one
        that moved rows to other keys (it commits in one transaction: a replay after a
        partial commit could find neither a moved row's old key nor its new one holding
        the values it needs, `TableBatch.fill_from`)."""
        work = list(batch.tables.values())
        count = len(self._writers)
        if any(t.fill_from for t in work) or sum(len(t.rows) for t in work) < PARALLEL_MIN_ROWS:
            count = 1
        planned: list[list[tuple[TableSchema, Share]]] = [[] for _ in range(count)]
        for table in work:
            text = rowtext.shared_row_text(table)
            if text.incomplete:
                raise ValueError(
                    f"{table.schema.qualified_name}: a batch is completed before it is applied"
                )
            for k, share in enumerate(shares(table.schema, text, kept, count)):
                planned[k].append((table.schema, share))
        return planned

    def apply(self, batch: Batch) -> None:
        """Targets and truncations first, then the rows: all in one transaction, or for a
        large batch split by key over the writers' connections, written at once. The
        batch is complete (`complete`)."""
        entry = self._planned.pop(id(batch), None)
        planned = entry[1] if entry is not None and entry[0] is batch else None
        work = list(batch.tables.values())
        with self._writers.transaction() as conn:
            for table in work:
                self._targets.ensure(conn, table.schema)
                self._truncate(conn, table)
            if planned is None:  # not completed here (its rows are complete already)
                planned = self._shares(batch, set())
            if len(planned) == 1:
                for layout, share in planned[0]:
                    self._rows.write(conn, layout, share)
                return
        self._writers.each(self._write_shares, planned)

    def _write_shares(self, writer: int, planned: list[tuple[TableSchema, Share]]) -> None:
        with self._writers.transaction(writer) as conn:
            for layout, share in planned:
                self._rows.write(conn, layout, share)

    def _truncate(self, conn: psycopg.Connection[Any], table: TableBatch) -> None:
        if table.truncate_version is not None:
            name = table.schema.name
            params = {"name": name, "version": table.truncate_version}
            for statement in truncate_sql(self.schema, name):
                conn.execute(statement, params)

    def _complete(
        self, conn: psycopg.Connection[Any], table: TableBatch, earlier: list[TableBatch]
    ) -> list[int]:
        """Fill the values the stream did not resend (unchanged TOAST, a tombstone's
        columns) from the images `earlier` batches hold, else from historic rows, into
        the batch (`cdc.sinks.historic.fill`): every sink then writes complete rows.
        Returns the identities of the tombstones whose historic row holds their values."""
        layout = table.schema
        text = rowtext.shared_row_text(table)
        planned = fill.plan(table, text.incomplete)
        since = self._copied_version(conn, layout) if earlier and planned.donor_keys else 0
        held = fill.earlier_donors(table, earlier, planned.donor_keys, since)
        keys = fill.to_read(planned, held, table.truncate_version or 0)
        donors: dict[Key, fill.Donor] = {}
        if keys:
            arrays = [
                array_literal([key[i] for key in keys]) for i in range(len(layout.primary_key))
            ]
            with conn.cursor(binary=True) as cur:
                found = cur.execute(donors_sql(self.schema, layout), arrays).fetchall()
            make_donor = fill.make_donor
            donors = {keys[row[0] - 1]: make_donor((int(row[1]), row[2:])) for row in found}
        completed, unfilled, kept = fill.fill(table, planned, donors, held)
        if unfilled and (unknown := self._visible(conn, layout, unfilled)):
            _log.warning(
                "unchanged_values_unknown", table=layout.qualified_name, rows=unknown,
                hint="rows whose TOASTed values the stream did not resend and historic does "
                f"not hold; they are stored as NULL: run {backfill_command(layout.name)}",
            )  # fmt: skip
        rowtext.add_completed(table, text, completed)
        return [id(image) for image in kept]

    def _copied_version(self, conn: psycopg.Connection[Any], layout: TableSchema) -> int:
        """The version of the rows of the table's last completed copy (0: none)."""
        if not self._copies_recorded:  # made once, never dropped: looked for until then
            self._copies_recorded = jobstate.copies_recorded(conn, self.schema)
            if not self._copies_recorded:
                return 0
        copied = jobstate.copied_at(conn, self.schema, layout.name)
        return 0 if copied is None else snapshot_version(copied)

    def _visible(
        self, conn: psycopg.Connection[Any], layout: TableSchema, versions: list[int]
    ) -> int:
        """How many of the rows of `versions` are newer than the table's truncate watermark
        and its last completed copy. A row of a change replayed from before either is
        never read, or replaced by the same replay: its key, absent from the copy (else
        the copy's newer row is kept), was deleted or moved on by a change between the
        row and the copy's snapshot."""
        row = conn.execute(watermark_sql(self.schema), (layout.name,)).fetchone()
        below = max(int(row[0]) if row else 0, self._copied_version(conn, layout) - 1)
        return sum(version > below for version in versions)

    def in_database(self, dsn: str) -> bool:
        """True if this sink writes into the database `dsn` names (same server, port and
        database name; the user and the options may differ)."""
        return _database_of(self._writers.dsn) == _database_of(dsn)

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
        with self._writers.transaction() as conn:
            self._targets.ensure(conn, layout)
            if not self._rows.insert_new(conn, layout, columns, data, version):
                self._rows.stage_and_upsert(conn, layout, columns, data)
        return refused


def _database_of(dsn: str) -> tuple[object, ...]:
    params = conninfo_to_dict(dsn)
    return tuple(params.get(key) for key in ("host", "hostaddr", "port", "dbname"))
