"""One table's reads in the three stores (source, historic, ClickHouse): a key range's
fingerprint and rows, split points, and the source's WAL position.

The queries are `cdc.check.rangequery`'s; a store that cannot be reached or read raises a
`CdcError` of the kind of its connection. Verify and the drift monitor compare through these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from cdc.check import rangequery
from cdc.check.drift import Ident, SourceRow, Target, TargetRow, WalPosition
from cdc.check.keyrange import (
    LEAF_ROWS,
    Key,
    KeyRange,
    clickhouse_key_problem,
    piece_rows,
    ranges_between,
)
from cdc.check.rangequery import ChQuery, PgQuery
from cdc.check.rowhash import ch_row_hash, held_differently, pg_row_hash
from cdc.check.sourceread import SourceRead
from cdc.classify import clickhouse_error
from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url
from cdc.protocol.lsn import Lsn
from cdc.schema import TableSchema
from cdc.sinks.ddl import current_view_name
from cdc.stream.session import shown_dsn


def connect(dsn: str, kind: ErrorKind) -> psycopg.Connection[Any]:
    """An autocommit connection to a Postgres store; a `CdcError` of `kind` if it fails."""
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise CdcError(
            kind, f"cannot connect to {shown_dsn(dsn)}: {redact_url(str(exc).strip())}"
        ) from exc


class TableStores:
    """One table's reads in the three stores: aggregates, rows, split points, WAL position."""

    def __init__(
        self,
        table: TableSchema,
        source: psycopg.Connection[Any],
        historic: psycopg.Connection[Any],
        historic_schema: str,
        ch_client: Any,
        ch_database: str,
        ch_cluster: bool = False,
    ) -> None:
        self.table = table
        self.source = source
        self.historic = historic
        self.historic_schema = historic_schema
        self.ch_client = ch_client
        self.ch_database = ch_database
        self.ch_cluster = ch_cluster
        self.clickhouse_skipped = clickhouse_key_problem(table)
        self.targets = (Target.HISTORIC,) + (
            (Target.CLICKHOUSE,) if self.clickhouse_skipped is None else ()
        )
        # The source's rows hashed as they are (for historic) and as ClickHouse holds them.
        self._pg_hash = pg_row_hash(table.columns)
        self._pg_hashes = [self._pg_hash]
        if held_differently(table.columns):
            self._pg_hashes.append(pg_row_hash(table.columns, held=True))
        self._ch_hash = ch_row_hash(table.columns)

    # -- reading ----------------------------------------------------------------------------

    def _pg(
        self, conn: psycopg.Connection[Any], query: PgQuery, what: str
    ) -> list[tuple[Any, ...]]:
        try:
            return conn.execute(query[0], query[1]).fetchall()
        except psycopg.Error as exc:
            kind = (
                ErrorKind.SCHEMA
                if isinstance(exc, psycopg.ProgrammingError)
                else ErrorKind.SOURCE_CONNECTION
                if conn is self.source
                else ErrorKind.SINK_CONNECTION
            )
            raise CdcError(kind, f"cannot read {what}: {str(exc).strip()}") from exc

    def _ch(self, query: ChQuery) -> list[tuple[Any, ...]]:
        try:
            return list(self.ch_client.query(query[0], parameters=query[1]).result_rows)
        except Exception as exc:  # the client raises its own types per backend
            error = clickhouse_error(exc, "", f"cannot read {self.table.name} in ClickHouse")
            if error is None:
                raise
            raise error from exc

    def wal(self, position: WalPosition) -> Lsn:
        query = sql.SQL("SELECT {}()::text").format(sql.Identifier(position.value))
        return Lsn.parse(self._pg(self.source, (query, []), "the WAL position")[0][0])

    def boundaries(self, rng: KeyRange, size: int) -> list[Key]:
        query = rangequery.pg_boundaries(self.table, rng, size)
        return [tuple(r[0]) for r in self._pg(self.source, query, self.table.qualified_name)]

    def split(
        self, pending: Sequence[tuple[KeyRange, int]]
    ) -> tuple[list[KeyRange], list[KeyRange]]:
        """(the ranges of `pending` small enough to compare key by key, the pieces of the
        others): each range comes with its source row count."""
        leaves: list[KeyRange] = []
        pieces: list[KeyRange] = []
        for rng, count in pending:
            if count <= LEAF_ROWS:
                leaves.append(rng)
                continue
            bounds = self.boundaries(rng, piece_rows(count))
            pieces += ranges_between(rng.lower, rng.upper, bounds, rng.root)
        return leaves, pieces

    def source_read(self, lower: Key | None, size: int) -> SourceRead:
        """The first `size` source rows after `lower`, in key order: their range ends at
        the last of them (at the table's end when fewer are left)."""
        query = rangequery.pg_source_rows_after(self.table, lower, size, self._pg_hashes)
        rows = self._pg(self.source, query, self.table.qualified_name)
        width = len(self.table.primary_key)
        upper = tuple(rows[-1][width : 2 * width]) if len(rows) == size else None
        return SourceRead(KeyRange(lower, upper), width, rows)

    def source_aggregate(self, rng: KeyRange) -> tuple[int, int, int]:
        """(rows, hash sum of the rows as they are, hash sum as ClickHouse holds them)."""
        query = rangequery.pg_aggregate(
            (self.table.schema, self.table.name), self.table, rng, self._pg_hashes
        )
        row = self._pg(self.source, query, self.table.qualified_name)[0]
        return int(row[0]), int(row[1]), int(row[-1])

    def target_aggregate(self, target: Target, rng: KeyRange) -> tuple[int, int]:
        view = current_view_name(self.table.name)
        if target is Target.HISTORIC:
            query = rangequery.pg_aggregate(
                (self.historic_schema, view), self.table, rng, [self._pg_hash]
            )
            row = self._pg(self.historic, query, f"{self.historic_schema}.{view}")[0]
        else:
            row = self._ch(
                rangequery.ch_aggregate(self.ch_database, view, self.table, rng, self._ch_hash)
            )[0]
        return int(row[0]), int(row[1])

    def truncated_since(self, target: Target, version: int) -> bool:
        """Whether `target` applied a truncation at `version` or later: the rows it removed
        are absent, whatever the source held before it."""
        if target is Target.HISTORIC:
            query = rangequery.pg_watermark(self.historic_schema, self.table)
            row = self._pg(self.historic, query, f"{self.historic_schema} truncations")[0]
        else:
            query_ch = rangequery.ch_watermark(self.ch_database, self.table, self.ch_cluster)
            row = self._ch(query_ch)[0]
        return int(row[0]) >= version

    def target_aggregate_before(
        self, target: Target, rng: KeyRange, newer: int
    ) -> tuple[tuple[int, int], list[Ident]]:
        """The range's fingerprint in `target` over the rows older than version `newer`,
        and the keys changed since (their rows are left out of it)."""
        if target is Target.HISTORIC:
            query = rangequery.pg_historic_aggregate(
                self.historic_schema, self.table, rng, self._pg_hash, newer
            )
            rows = self._pg(self.historic, query, f"{self.historic_schema}.{self.table.name}")
        else:
            rows = self._ch(
                rangequery.ch_aggregate_before(
                    self.ch_database, self.table, rng, self._ch_hash, newer, self.ch_cluster
                )
            )
        count, total, changed = rows[0]
        return (int(count), int(total)), [tuple(key) for key in changed or ()]

    def differs(self, rng: KeyRange, source: tuple[int, int, int]) -> bool:
        expected = {Target.HISTORIC: source[:2], Target.CLICKHOUSE: (source[0], source[2])}
        return any(self.target_aggregate(t, rng) != expected[t] for t in self.targets)

    def source_rows(self, rng: KeyRange) -> dict[Ident, SourceRow]:
        query = rangequery.pg_source_rows(self.table, rng, self._pg_hashes)
        return {
            tuple(r[0]): SourceRow(tuple(r[1]), (int(r[2]), int(r[-1])))
            for r in self._pg(self.source, query, self.table.qualified_name)
        }

    def target_rows(self, target: Target, rng: KeyRange) -> dict[Ident, TargetRow]:
        if target is Target.HISTORIC:
            query = rangequery.pg_historic_rows(
                self.historic_schema, self.table, rng, self._pg_hash
            )
            rows = self._pg(self.historic, query, f"{self.historic_schema}.{self.table.name}")
        else:
            rows = self._ch(
                rangequery.ch_rows(
                    self.ch_database, self.table, rng, self._ch_hash, self.ch_cluster
                )
            )
        return {tuple(r[0]): TargetRow(tuple(r[1]), int(r[2]), int(r[3]), bool(r[4])) for r in rows}
