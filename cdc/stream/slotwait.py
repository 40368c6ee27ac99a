"""What a logical slot's creation waits for, said while it waits.

Postgres builds a new logical slot's snapshot only once every transaction that had a
transaction id when the creation began has ended, in every database of the server,
prepared transactions included: an idle session left inside a transaction, a long
migration, a forgotten `PREPARE TRANSACTION` hold `CREATE_REPLICATION_SLOT` (the daemon's
start, every copy at a fresh snapshot) for as long as they last, with nothing to see.
`waits_noticed` names them in the log while the creation waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from cdc.ops.logs import get_logger
from cdc.stream.session import canonical_dsn

FIRST_NOTICE_S = 5.0
NOTICE_EVERY_S = 60.0
SHOWN = 5

# Sessions in a transaction that has an id, oldest first (the slot waits for those that
# had one when its creation began), and prepared transactions.
OPEN_TRANSACTIONS_SQL = f"""
SELECT pid, datname, usename, state, extract(epoch FROM now() - xact_start)::int,
       left(query, 120)
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
ORDER BY xact_start LIMIT {SHOWN}
"""
PREPARED_SQL = f"SELECT gid, database, owner FROM pg_prepared_xacts ORDER BY prepared LIMIT {SHOWN}"

HINT = (
    "Postgres builds a new slot's snapshot once every transaction that was open when the "
    "creation began has ended, in every database of the server: end them (commit or roll "
    "back; `SELECT pg_terminate_backend(pid)`; a prepared one: `COMMIT PREPARED 'gid'` or "
    "`ROLLBACK PREPARED 'gid'`)"
)


def open_transactions(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The transactions a slot's creation may be waiting for, as the log shows them."""
    keys: tuple[str, ...] = ("pid", "database", "user", "state", "open_for_s", "query")
    sessions = [dict(zip(keys, row, strict=True)) for row in conn.execute(OPEN_TRANSACTIONS_SQL)]
    keys = ("gid", "database", "owner")
    prepared = [dict(zip(keys, row, strict=True)) for row in conn.execute(PREPARED_SQL)]
    return {"transactions": sessions, "prepared": prepared}


@contextmanager
def waits_noticed(dsn: str, slot: str) -> Iterator[None]:
    """Log `slot_creation_waiting` with the open transactions if the block (the creation of
    `slot`) lasts more than a few seconds, and again every minute while it lasts."""
    done = threading.Event()

    def watch() -> None:
        log = get_logger(slot=slot)
        wait = FIRST_NOTICE_S
        while not done.wait(wait):
            wait = NOTICE_EVERY_S
            found: dict[str, Any]
            try:
                with psycopg.connect(canonical_dsn(dsn), autocommit=True) as conn:
                    found = open_transactions(conn)
            except psycopg.Error as exc:  # only a notice: the creation itself reports errors
                found = {"error": str(exc).strip()}
            log.warning("slot_creation_waiting", hint=HINT, **found)

    watcher = threading.Thread(target=watch, name="cdc-slot-wait", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
