"""The databases' exceptions as the project's errors, classified once: Postgres by
SQLSTATE class, ClickHouse by its error code, the network by type.

What a retry can outlast (a lost connection, a server busy or restarting, a deadlock)
becomes a connection error, retried with backoff; a refusal that will repeat (a type
mismatch, a missing table, a denied privilege) stops with a message naming it, since
retrying it forever would only look alive. An exception that is none of these (a bug)
is not classified: it leaves the daemon with its traceback.
"""

from __future__ import annotations

import psycopg
from clickhouse_connect.driver import exceptions as ch_exceptions

from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url

# SQLSTATEs and classes a retry can outlast: connection exceptions (08), serialization
# failure and deadlock, insufficient resources (53), operator intervention (57: admin
# shutdown, crash recovery, cannot connect now, query cancelled), lock not available.
PG_TRANSIENT_CLASSES = frozenset({"08", "53", "57"})
PG_TRANSIENT = frozenset({"40001", "40P01", "55P03"})
PG_PERMISSION = frozenset({"42501", "28000", "28P01"})
# Syntax or access rule violations (42), feature not supported (0A): the target's schema
# does not fit what is written.
PG_SCHEMA_CLASSES = frozenset({"42", "0A"})

# ClickHouse error codes a retry can outlast.
CH_TRANSIENT = frozenset({
    3,    # UNEXPECTED_END_OF_FILE
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    236,  # ABORTED
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    252,  # TOO_MANY_PARTS
    285,  # TOO_FEW_LIVE_REPLICAS
    319,  # UNKNOWN_STATUS_OF_INSERT
    394,  # QUERY_WAS_CANCELLED
    425,  # SYSTEM_ERROR
    999,  # KEEPER_EXCEPTION
    1000,  # POCO_EXCEPTION (network)
})  # fmt: skip
CH_PERMISSION = frozenset({192, 193, 497, 516})  # unknown user, wrong password, denied
CH_SCHEMA = frozenset({
    16,  # NO_SUCH_COLUMN_IN_TABLE
    44,  # ILLEGAL_COLUMN
    47,  # UNKNOWN_IDENTIFIER
    53,  # TYPE_MISMATCH
    60,  # UNKNOWN_TABLE
    70,  # CANNOT_CONVERT_TYPE
    81,  # UNKNOWN_DATABASE
})  # fmt: skip


def postgres_error(exc: psycopg.Error, connection: ErrorKind, what: str) -> CdcError:
    """`exc`, raised while doing `what`, as a `CdcError`; `connection` is the kind of a
    transient failure on that side (`SOURCE_CONNECTION` or `SINK_CONNECTION`)."""
    state = exc.sqlstate
    message = f"{what}: {str(exc).strip()}"
    if state is None or state in PG_TRANSIENT or state[:2] in PG_TRANSIENT_CLASSES:
        # No SQLSTATE: the client lost the server (psycopg's OperationalError).
        return CdcError(connection, message)
    if state in PG_PERMISSION:
        return CdcError(ErrorKind.PERMISSION, f"{message} (SQLSTATE {state})")
    if state[:2] in PG_SCHEMA_CLASSES:
        return CdcError(ErrorKind.SCHEMA, f"{message} (SQLSTATE {state})")
    return CdcError(ErrorKind.REJECTED, f"{message} (SQLSTATE {state})")


def clickhouse_error(exc: Exception, url: str, what: str) -> CdcError | None:
    """`exc`, raised by the ClickHouse client while doing `what` with the server at
    `url`, as a `CdcError`; None if it is not a database or network error (a bug)."""
    if isinstance(exc, CdcError):
        return exc
    detail = f"{what} ({redact_url(url)}): {type(exc).__name__}: {redact_url(str(exc))[:500]}"
    if isinstance(exc, OSError):  # refused, reset, timed out, name not resolved
        return CdcError(ErrorKind.SINK_CONNECTION, detail)
    if not isinstance(exc, ch_exceptions.Error):
        return None
    code = exc.code
    if code is None:
        # No server code: the transport failed (HTTP errors, a closed stream).
        if isinstance(exc, ch_exceptions.OperationalError | ch_exceptions.InterfaceError):
            return CdcError(ErrorKind.SINK_CONNECTION, detail)
        return CdcError(ErrorKind.REJECTED, detail)
    if code in CH_TRANSIENT:
        return CdcError(ErrorKind.SINK_CONNECTION, detail)
    if code in CH_PERMISSION:
        return CdcError(ErrorKind.PERMISSION, detail)
    if code in CH_SCHEMA:
        return CdcError(ErrorKind.SCHEMA, detail)
    return CdcError(ErrorKind.REJECTED, detail)
