"""Changes of the publications' table lists that yield to the application's locks.

Adding a table to a publication or taking it out needs a `SHARE UPDATE EXCLUSIVE` lock on
the table, which an application's transaction may hold against it (a migration, `LOCK
TABLE`). Waiting for it would stop the stream of every table meanwhile, and queue behind
the daemon's request the locks other sessions ask for that conflict with it (DDL,
`VACUUM`, `CREATE INDEX`; the application's reads and writes do not): the change waits at
most `lock_timeout`, says so once, and is tried again at the schema follower's next look.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from cdc.ops.settings import Settings
from cdc.stream import publications

# The publication changes wait this long for another session's lock on the table (the
# stream stands still meanwhile), then are tried again at the next look.
LOCK_TIMEOUT_SQL = "SET LOCAL lock_timeout = '1s'"
LOCKED_DETAIL = (
    "another session's transaction holds a lock on the table (a migration, LOCK TABLE): "
    "tried again at every look at the schema until it ends"
)


class PublicationEditor:
    """Alters the publications `settings` names through `query` (the catalog's)."""

    def __init__(
        self,
        settings: Settings,
        query: Callable[[Callable[[psycopg.Connection[Any]], Any]], Any],
        log: Any,
    ) -> None:
        self._settings = settings
        self._query = query
        self._log = log
        self._locked: set[str] = set()  # said to be locked by another session

    def alter(self, action: str, table: str, publication: str | None = None) -> bool:
        """Add `table` to the publication or drop it from it; False, said once, while
        another session's lock on the table keeps it from happening (tried again at the
        next look): waiting would stop the stream of every table meanwhile."""
        statement = publications.alter_publication_sql(
            publication or self._settings.publication, action, self._settings.source_schema,
            table,
        )  # fmt: skip

        def change(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(LOCK_TIMEOUT_SQL)
                conn.execute(statement)

        try:
            self._query(change)
        except psycopg.errors.LockNotAvailable:
            if table not in self._locked:
                self._locked.add(table)
                name = f"{self._settings.source_schema}.{table}"
                self._log.warning("publication_change_waiting", table=name,
                                  change=f"{action} table", detail=LOCKED_DETAIL)  # fmt: skip
            return False
        self._locked.discard(table)
        return True
