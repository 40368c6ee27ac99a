"""A table added to or taken out of the publications by hand (`cdc publication add-table`
and `drop-table`), by the rules the daemon follows: a table whose UPDATE and DELETE
Postgres would then refuse is not added (DESIGN.md invariant 7); one without a key goes
into the append publication, as an append-only log; one that gained a key leaves it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from cdc.errors import CdcError, ErrorKind
from cdc.stream import eligibility
from cdc.stream.publications import (
    INSERTS_ONLY,
    alter_publication_sql,
    append_publication,
    publication_exists,
    publication_options,
    publication_tables,
)


def _require_publication(conn: psycopg.Connection[Any], name: str) -> None:
    if not publication_exists(conn, name):
        raise CdcError(
            ErrorKind.SETUP,
            f"publication {name!r} does not exist; create it with `cdc publication create`",
        )


def add_table(conn: psycopg.Connection[Any], name: str, schema: str, table: str) -> None:
    """Add `table`, unless Postgres would then refuse its UPDATE and DELETE (DESIGN.md
    invariant 7): that is refused with the statement that fixes it."""
    _require_publication(conn, name)
    found = {t.name: t for t in eligibility.source_tables(conn, schema)}
    if table not in found:
        raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} does not exist")
    if (schema, table) in publication_tables(conn, name):
        raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} is already in {name!r}")
    why = eligibility.exclusion(found[table], publication_options(conn, name).publishes_changes)
    if why is not None and eligibility.logged_only(found[table]):
        append = append_publication(name)
        if not publication_exists(conn, append):
            raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} has no primary key and is "
                           f"replicated through publication {append!r}, which does not exist; "
                           f"create it: CREATE PUBLICATION {append} WITH "
                           f"({INSERTS_ONLY.as_string(None)})")  # fmt: skip
        if (schema, table) in publication_tables(conn, append):
            raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} is already in {append!r}")
        conn.execute(alter_publication_sql(append, "add", schema, table))
        return
    if why is not None:
        raise CdcError(
            ErrorKind.SETUP,
            f"table {schema}.{table} is not added to {name!r}: {why.reason}; fix: {why.fix}",
        )
    with conn.transaction():
        conn.execute(alter_publication_sql(name, "add", schema, table))
        append = append_publication(name)
        if (schema, table) in publication_tables(conn, append):  # it has a key now
            conn.execute(alter_publication_sql(append, "drop", schema, table))


def drop_table(conn: psycopg.Connection[Any], name: str, schema: str, table: str) -> None:
    _require_publication(conn, name)
    append = append_publication(name)
    if (schema, table) in publication_tables(conn, append):
        conn.execute(alter_publication_sql(append, "drop", schema, table))
        return
    if (schema, table) not in publication_tables(conn, name):
        raise CdcError(ErrorKind.SETUP, f"table {schema}.{table} is not in {name!r}")
    conn.execute(alter_publication_sql(name, "drop", schema, table))
