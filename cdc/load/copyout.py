"""Read the whole output of a `COPY ... TO STDOUT` into one bytes object.

psycopg's `Copy` reads a row per generator round trip (~1.5 µs of Python per row,
measured); a backfill reads millions of rows through it, on threads that share the GIL
with the ClickHouse insert. Here each row costs one libpq call: the copy is driven
through the connection's `pgconn`, like the replication stream, under the connection's
lock, inside whatever transaction the connection has open, and appended to one buffer.
The rows are read in C without the GIL (`cdc.load._copyout`, calling the libpq psycopg loaded)
when it is built and finds that libpq, and in Python otherwise.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq, sql

try:
    from cdc.load import _copyout
except ImportError:  # not built: the rows are read in Python
    _copyout = None  # type: ignore[assignment]

COPY_WOULD_BLOCK = 0
NATIVE = _copyout is not None and _copyout.load()
# Reads a COPY's rows from a pgconn in COPY_OUT state; None: it cannot (then they are read
# in Python).
Reader = Callable[[Any], tuple[bytes, int] | None]


def read_in_c(pgconn: Any) -> tuple[bytes, int] | None:
    """The rows read in C, without the GIL; None when the C reader is not built, found no
    libpq, or cannot vouch for the connection (another libpq than the one it loaded)."""
    address = pgconn.pgconn_ptr
    if not NATIVE or address is None:
        return None
    return _copyout.read_rows(address, pgconn.backend_pid)


def read_in_python(pgconn: Any) -> tuple[bytes, int]:
    out = bytearray()  # grown in place: no bytes object per row
    rows = 0
    read = pgconn.get_copy_data
    while True:
        nbytes, data = read(1)
        if nbytes > 0:
            out += data
            rows += 1
        elif nbytes == COPY_WOULD_BLOCK:
            _wait_readable(pgconn)
        else:
            return bytes(out), rows


def copy_out(
    conn: psycopg.Connection[Any], query: sql.Composable, read: Reader = read_in_c
) -> tuple[bytes, int]:
    """What `query` (a `COPY ... TO STDOUT`) writes, as the server sent it, and the number
    of rows (CopyData messages) it came in; read by `read`, else in Python."""
    text = query.as_bytes(conn)
    with conn.lock:
        pgconn = conn.pgconn
        pgconn.send_query(text)
        _flush(pgconn)
        result = _next_result(pgconn)
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            _raise(conn, pgconn, result)
        got = read(pgconn)
        data, rows = got if got is not None else read_in_python(pgconn)
        result = _next_result(pgconn)
        if result is None or result.status != pq.ExecStatus.COMMAND_OK:
            _raise(conn, pgconn, result)
        while _next_result(pgconn) is not None:
            pass
    return data, rows


def _flush(pgconn: Any) -> None:
    while pgconn.flush():
        select.select([], [pgconn.socket], [])


def _wait_readable(pgconn: Any) -> None:
    select.select([pgconn.socket], [], [])
    pgconn.consume_input()


def _next_result(pgconn: Any) -> Any:
    while pgconn.is_busy():
        _wait_readable(pgconn)
    return pgconn.get_result()


def _raise(conn: psycopg.Connection[Any], pgconn: Any, result: Any) -> None:
    while _next_result(pgconn) is not None:
        pass  # the connection is ready for the rollback the caller will issue
    if result is None:
        raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
    raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
