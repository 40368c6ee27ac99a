"""What a backfill job copies: the publication's tables (`published_schemas`), and each
keyed table split into chunks in the job's snapshot (`key_chunks`). An append-only log is
split by blocks instead (`cdc.load.appendonly.block_chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from cdc.describe import describe_table
from cdc.errors import CdcError, ErrorKind
from cdc.load.chunks import Chunk, Key, next_boundary_sql
from cdc.schema import TableSchema
from cdc.stream.publications import replicated_tables


def check_tables(requested: Sequence[str], published: Sequence[str]) -> None:
    unknown = sorted(set(requested) - set(published))
    if unknown:
        raise CdcError(
            ErrorKind.CONFIG,
            f"not in the publication: {', '.join(unknown)}; add them with "
            "`cdc publication add-table`",
        )


def check_where(where: str | None, replaces: bool, tables: Sequence[TableSchema]) -> None:
    """Refuse a `--where` that would lose rows: with a copy that replaces what the
    targets hold, or for an append-only log (always copied whole, replacing)."""
    if where and replaces:
        raise CdcError(
            ErrorKind.CONFIG,
            "--where cannot be used with --replace: a copy that replaces what the targets "
            "hold copies whole tables (it would remove every row the predicate leaves out)",
        )
    logs = sorted(t.name for t in tables if t.append_only)
    if where and logs:
        raise CdcError(
            ErrorKind.CONFIG,
            f"--where cannot be used for {', '.join(logs)}: a table without a key is "
            "copied whole (its copy replaces what the targets hold)",
        )


def published_schemas(
    conn: psycopg.Connection[Any], publication: str, only: Sequence[str] = ()
) -> list[TableSchema]:
    """Schemas of the publication's tables and of its append publication's (all, or the
    ones named in `only`)."""
    published = replicated_tables(conn, publication)
    check_tables(only, [name for _, name in published])
    return [
        describe_table(conn, schema, name) for schema, name in published if not only or name in only
    ]


def key_chunks(
    source: psycopg.Connection[Any],
    table: TableSchema,
    number: int,
    lower: Key,
    chunk_size: int,
    where: str | None,
) -> Iterator[Chunk]:
    """The table's ranges of `chunk_size` rows (of those `where` keeps), each bounded by
    its key index (`next_boundary_sql`), from chunk `number` with lower key `lower` on; the
    last has no upper key. Each is found only once the one before was handed on, so the
    workers copy the first chunks while the rest are being found."""
    while True:
        bound = source.execute(next_boundary_sql(table, lower, chunk_size, where)).fetchone()
        chunk = Chunk(table.name, number, lower, None if bound is None else bound[0])
        yield chunk
        if chunk.upper is None:
            return
        number, lower = number + 1, chunk.upper
