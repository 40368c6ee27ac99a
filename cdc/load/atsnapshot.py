"""What the catalog at a backfill job's snapshot says about the job's tables.

Read in a transaction that imported the snapshot: plain catalog reads see the catalog as
it was then, while a table's file (`pg_relation_filenode`) is the current one. Each
answer is by table name, for the tables of one job (grouped by schema, one query each).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg

from cdc.schema import TableSchema
from cdc.stream import eligibility, followrecords
from cdc.stream.snapshot import Snapshot, import_snapshot

FEW_TABLES = 20  # read one by one, not by schema (a schema of thousands takes ~0.5 s)
# The tables of `schema` named in `names` that none of the publications `pubs` holds.
UNPUBLISHED_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(names)s) AND NOT EXISTS (
    SELECT 1 FROM pg_publication p WHERE p.pubname = ANY(%(pubs)s) AND (
        p.puballtables
        OR EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = c.oid)
        {schemas}))
"""
SCHEMA_PUBLICATIONS = 150000  # from Postgres 15 a publication may hold a schema's tables
IN_SCHEMA_SQL = """OR EXISTS (SELECT 1 FROM pg_publication_namespace s
                   WHERE s.pnpubid = p.oid AND s.pnnspid = n.oid)"""
# The tables of `schema` named in `names` a leaf of which has another file than the
# snapshot's catalog names: rewritten or truncated since.
REWRITTEN_SQL = """
SELECT DISTINCT c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class l
  ON l.oid = c.oid OR l.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf)
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(names)s) AND l.relkind = 'r'
  AND l.relfilenode IS DISTINCT FROM pg_relation_filenode(l.oid)
"""


@contextmanager
def _at(dsn: str, snapshot: Snapshot) -> Iterator[psycopg.Connection[Any]]:
    """A connection to `dsn` in a transaction that sees `snapshot` (rolled back after)."""
    with psycopg.connect(dsn) as conn:
        import_snapshot(conn, snapshot)
        yield conn
        conn.rollback()


def _by_schema(tables: Iterable[TableSchema]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for table in tables:
        grouped.setdefault(table.schema, []).append(table.name)
    return grouped


def _names(conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any]) -> list[str]:
    return [row[0] for row in conn.execute(query, params).fetchall()]


def unpublished(
    dsn: str, snapshot: Snapshot, tables: Iterable[TableSchema], publications: Collection[str]
) -> set[str]:
    """The names of `tables` that none of `publications` holds at `snapshot`."""
    gone: set[str] = set()
    with _at(dsn, snapshot) as conn:
        schemas = IN_SCHEMA_SQL if conn.info.server_version >= SCHEMA_PUBLICATIONS else ""
        query = UNPUBLISHED_SQL.format(schemas=schemas)
        for schema, names in _by_schema(tables).items():
            params = {"schema": schema, "names": names, "pubs": list(publications)}
            gone.update(_names(conn, query, params))
    return gone


def rewritten(dsn: str, snapshot: Snapshot, tables: Iterable[TableSchema]) -> list[str]:
    """The names of `tables` whose storage changed since `snapshot` (a leaf's file is not
    the one the snapshot's catalog names), in name order."""
    found: list[str] = []
    with _at(dsn, snapshot) as conn:
        for schema, names in _by_schema(tables).items():
            found += _names(conn, REWRITTEN_SQL, {"schema": schema, "names": names})
    return sorted(found)


def followed(
    dsn: str, snapshot: Snapshot, tables: Iterable[TableSchema]
) -> dict[str, followrecords.Followed]:
    """`tables` as they were at `snapshot` (OID, `Shape`), by name; one gone is left out."""
    result: dict[str, followrecords.Followed] = {}
    with _at(dsn, snapshot) as conn:
        for schema, names in _by_schema(tables).items():
            if len(names) > FEW_TABLES:
                found = eligibility.source_tables(conn, schema)
            else:
                found = [t for name in sorted(names)
                         for t in eligibility.source_tables(conn, schema, name)]  # fmt: skip
            wanted = set(names)
            for table in found:
                if table.name in wanted:
                    result[table.name] = followrecords.Followed(table.oid, table.shape)
    return result


def record_followed(
    dsn: str,
    snapshot: Snapshot,
    tables: Iterable[TableSchema],
    state: psycopg.Connection[Any],
    state_schema: str,
) -> None:
    """Record `tables`, copied at `snapshot`, as they were in it (OID, `Shape`), unless
    recorded already: what the schema follower compares the source with at its first
    look after a start, so a column renamed or a partition dropped after the copy's
    snapshot, which the copy does not hold, is seen. An older record is kept: chunks
    copied at an older snapshot (a copy resumed) hold the table as it was then, and a
    record older than the rows costs a copy too many, never one too few."""
    found = followed(dsn, snapshot, tables)
    followrecords.record_followed(state, state_schema, found, keep=True)
