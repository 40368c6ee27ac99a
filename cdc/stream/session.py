"""The session every connection to Postgres runs with, whatever the server's, database's
or role's defaults: settings that make the text form of each value canonical, the same in
the replication stream, a backfill's COPY, the sinks' writes and the checks; and no
timeout that would cut the pipeline's work short (as pg_dump does): a database's
`statement_timeout` or `idle_in_transaction_session_timeout`, set for its application,
ended the chunks of an initial load. A wait the pipeline must bound sets its own
(`SET LOCAL lock_timeout`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc.ops.settings import redact_url

# The walsender prints values with its session's settings; every other connection takes
# the same ones, so a value's text is the same whichever connection read it.
CANONICAL_TEXT_OPTIONS = (
    "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex"
)
# Known to every supported server (`idle_session_timeout`, from Postgres 14, is set after
# connecting where it matters: an unknown setting here would refuse the connection).
NO_TIMEOUT_OPTIONS = (
    "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0"
)


IDLE_SESSION_TIMEOUT_VERSION = 140000


def never_idle_out(conn: psycopg.Connection[Any]) -> None:
    """Keep a session that holds something while idle (the pipeline lock) from a server's
    `idle_session_timeout` (Postgres 14+), which would end it and release what it holds."""
    if conn.info.server_version >= IDLE_SESSION_TIMEOUT_VERSION:
        conn.execute("SET idle_session_timeout = 0")


def canonical_dsn(dsn: str) -> str:
    """`dsn` with `CANONICAL_TEXT_OPTIONS` and `NO_TIMEOUT_OPTIONS` appended to its
    `options`."""
    params = conninfo_to_dict(dsn)
    existing = str(params.get("options") or "")
    options = f"{existing} {CANONICAL_TEXT_OPTIONS} {NO_TIMEOUT_OPTIONS}".strip()
    return make_conninfo(dsn, options=options)


def shown_dsn(dsn: str) -> str:
    """`dsn` as a message shows it: without the options `canonical_dsn` appended, its
    password redacted."""
    params = conninfo_to_dict(dsn)
    options = str(params.pop("options", "") or "")
    for added in (CANONICAL_TEXT_OPTIONS, NO_TIMEOUT_OPTIONS):
        options = options.replace(added, "")
    if options.strip():
        params["options"] = options.strip()
    return redact_url(make_conninfo("", **params))


def replication_connect(dsn: str) -> psycopg.Connection[Any]:
    """A `replication=database` session. Never prepared: psycopg prepares a statement it
    has run a few times (`prepare_threshold`), which a replication session refuses
    ("extended query protocol not supported"); a slot made again after a race runs the
    same command more often than that."""
    return psycopg.connect(
        canonical_dsn(dsn), replication="database", autocommit=True, prepare_threshold=None
    )
