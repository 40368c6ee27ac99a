"""Reading a COPY's whole output through the connection's pgconn: the same bytes psycopg's
Copy gives, in the connection's transaction, and errors raised as psycopg raises them; with
the rows read in C and in Python."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc.load import copyout
from cdc.load.copyout import copy_out

pytestmark = pytest.mark.integration


def only_in_c(pgconn: Any) -> tuple[bytes, int]:
    got = copyout.read_in_c(pgconn)
    assert got is not None, "the rows were not read in C"
    return got


@pytest.fixture(params=["C", "Python"])
def read(request: pytest.FixtureRequest) -> copyout.Reader:
    if request.param == "C":
        assert copyout.NATIVE, (
            "cdc.load._copyout is not built or found no libpq: run `make install`"
        )
        return only_in_c
    return copyout.read_in_python


ROWS = """
CREATE TABLE t (id int PRIMARY KEY, v text, j jsonb);
INSERT INTO t SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE E'a\\tb\\\\c\\n' || g END,
       jsonb_build_object('k', repeat('x', g % 300))
FROM generate_series(1, 20000) g;
"""


def via_psycopg(conn: psycopg.Connection[Any], query: sql.SQL) -> bytes:
    with conn.cursor() as cur, cur.copy(query) as copy:
        return b"".join(bytes(block) for block in copy)


def test_the_same_bytes_as_psycopg_and_the_row_count(pg_dsn: str, read: copyout.Reader) -> None:
    query = sql.SQL("COPY (SELECT * FROM t ORDER BY id) TO STDOUT")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(ROWS)
        conn.commit()
        data, rows = copy_out(conn, query, read)
        assert rows == 20000
        assert data == via_psycopg(conn, query)
        assert data.count(b"\n") == 20000
        assert b"\n7\t\\N\t" in data and b"\n8\ta\\tb\\\\c\\n8\t" in data


def test_it_reads_inside_the_open_transaction(pg_dsn: str, read: copyout.Reader) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE t (id int)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (1), (2)")  # not committed
        data, rows = copy_out(conn, sql.SQL("COPY t TO STDOUT"), read)
        assert (data, rows) == (b"1\n2\n", 2)
        assert conn.info.transaction_status is psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        assert copy_out(conn, sql.SQL("COPY t TO STDOUT"), read) == (b"", 0)


def test_an_error_is_raised_as_psycopg_raises_it_and_the_connection_recovers(
    pg_dsn: str, read: copyout.Reader
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable, match="missing"):
            copy_out(conn, sql.SQL("COPY missing TO STDOUT"), read)
        conn.rollback()
        with pytest.raises(psycopg.errors.DivisionByZero):
            copy_out(
                conn,
                sql.SQL("COPY (SELECT 1 / (g - 500) FROM generate_series(1, 1000) g) TO STDOUT"),
                read,
            )
        conn.rollback()
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_the_c_reader_refuses_a_connection_it_cannot_vouch_for(pg_dsn: str) -> None:
    """A PID that does not match (as through another libpq than the connection's): no rows
    read in C, and the copy then reads them in Python."""
    from cdc.load import _copyout

    with psycopg.connect(pg_dsn) as conn:
        address: int = conn.pgconn.pgconn_ptr  # type: ignore[attr-defined]
        assert _copyout.read_rows(address, conn.pgconn.backend_pid + 1) is None
        refused = copy_out(conn, sql.SQL("COPY (SELECT 1) TO STDOUT"), lambda pgconn: None)
        assert refused == (b"1\n", 1)
