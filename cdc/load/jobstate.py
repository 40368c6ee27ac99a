"""A backfill job's progress, kept in the historic database: the job's tables and whether
each is split into chunks completely (`_cdc_backfill_plans`), its chunks and which are done
(`_cdc_backfill`), and each table's state (`_cdc_tables`: copying -> ready | failed |
quarantined). Every call runs on the autocommit connection it is given.

Chunks are recorded as the plan finds them; a table is planned once its last chunk (the
one without an upper key) is recorded, so a plan cut short continues after its last
recorded chunk. `copied_at` answers, whatever the job, the snapshot of a table's last
copy (what the historic sink's fill of unchanged values compares donors with).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import psycopg
from psycopg import sql

from cdc.load.chunks import CHUNKS_TABLE, PLANS_TABLE, TABLES_TABLE, Chunk, Key, state_ddl
from cdc.states import TableState


def _qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


class JobState:
    """The state of job `job` over `tables`, in `schema`."""

    def __init__(self, schema: str, job: str, tables: Collection[str]) -> None:
        self.schema = schema
        self.job = job
        self.tables = tables

    def _ident(self, name: str) -> sql.Composed:
        return _qualified(self.schema, name)

    def pending_chunks(self, conn: psycopg.Connection[Any]) -> list[Chunk]:
        rows = conn.execute(
            sql.SQL(
                "SELECT table_name, chunk, lower_key, upper_key FROM {} "
                "WHERE job = %s AND NOT done ORDER BY table_name, chunk"
            ).format(self._ident(CHUNKS_TABLE)),
            (self.job,),
        ).fetchall()
        return [Chunk(r[0], r[1], r[2], r[3]) for r in rows if r[0] in self.tables]

    def plans(self, conn: psycopg.Connection[Any]) -> dict[str, bool]:
        """The job's tables, each with whether it is split into chunks completely; empty
        for a job that has not started."""
        for statement in state_ddl(self.schema):
            conn.execute(statement)
        rows = conn.execute(
            sql.SQL("SELECT table_name, planned FROM {} WHERE job = %s").format(
                self._ident(PLANS_TABLE)
            ),
            (self.job,),
        ).fetchall()
        return {name: planned for name, planned in rows if name in self.tables}

    def to_plan(self, conn: psycopg.Connection[Any]) -> list[str]:
        """The tables left to split into chunks: every table of a job that has not started
        (recorded now as the job's tables), else the job's tables whose plan was cut."""
        plans = self.plans(conn)
        if not plans:
            with conn.transaction():
                for name in self.tables:
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (job, table_name) VALUES (%s, %s) "
                            "ON CONFLICT DO NOTHING"
                        ).format(self._ident(PLANS_TABLE)),
                        (self.job, name),
                    )
            plans = dict.fromkeys(self.tables, False)
        return [name for name, planned in plans.items() if not planned]

    def next_chunk(self, conn: psycopg.Connection[Any], table: str) -> tuple[int, Key]:
        """The number and lower key of the table's next chunk to plan."""
        last = conn.execute(
            sql.SQL(
                "SELECT chunk, upper_key FROM {} WHERE job = %s AND table_name = %s "
                "ORDER BY chunk DESC LIMIT 1"
            ).format(self._ident(CHUNKS_TABLE)),
            (self.job, table),
        ).fetchone()
        return (last[0] + 1, last[1]) if last else (0, None)

    def _delete(self, conn: psycopg.Connection[Any], state_table: str, table: str) -> None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE job = %s AND table_name = %s").format(
                self._ident(state_table)
            ),
            (self.job, table),
        )

    def restart(self, conn: psycopg.Connection[Any], table: str) -> None:
        """Forget the table's chunks: it is split and copied again from its start."""
        with conn.transaction():
            self._delete(conn, CHUNKS_TABLE, table)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (job, table_name) VALUES (%s, %s) "
                    "ON CONFLICT (job, table_name) DO UPDATE SET planned = false"
                ).format(self._ident(PLANS_TABLE)),
                (self.job, table),
            )

    def forget(self, conn: psycopg.Connection[Any], table: str) -> None:
        """Take the table out of the job: its chunks and its plan."""
        with conn.transaction():
            self._delete(conn, CHUNKS_TABLE, table)
            self._delete(conn, PLANS_TABLE, table)

    def record(self, conn: psycopg.Connection[Any], chunk: Chunk) -> None:
        """Record a chunk; the last of its table (no upper key) completes the table's plan."""
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (job, table_name, chunk, lower_key, upper_key) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(self._ident(CHUNKS_TABLE)),
                (self.job, chunk.table, chunk.number, chunk.lower, chunk.upper),
            )
            if chunk.upper is None:
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET planned = true WHERE job = %s AND table_name = %s"
                    ).format(self._ident(PLANS_TABLE)),
                    (self.job, chunk.table),
                )

    def done(self, conn: psycopg.Connection[Any], chunk: Chunk, rows: int, lsn: str) -> None:
        """The chunk is in every target, copied at the snapshot at `lsn`."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET done = true, rows = %s, snapshot_lsn = %s "
                "WHERE job = %s AND table_name = %s AND chunk = %s"
            ).format(self._ident(CHUNKS_TABLE)),
            (rows, lsn, self.job, chunk.table, chunk.number),
        )

    def replacing(self, conn: psycopg.Connection[Any]) -> set[str]:
        """The job's tables recorded as to be copied whole, replacing what their targets
        hold, whose targets were not emptied yet (by this job, or by whoever recorded it:
        the schema follower, `cdc rebuild`)."""
        rows = conn.execute(
            sql.SQL("SELECT table_name FROM {} WHERE state = %s AND table_name = ANY(%s)").format(
                self._ident(TABLES_TABLE)
            ),
            (TableState.REPLACING, list(self.tables)),
        ).fetchall()
        return {row[0] for row in rows}

    def set_state(
        self, conn: psycopg.Connection[Any], table: str, state: TableState, error: str | None = None
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (table_name, job, state, error) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (table_name) DO UPDATE SET job = excluded.job, "
                "state = excluded.state, error = excluded.error, updated_at = now()"
            ).format(self._ident(TABLES_TABLE)),
            (table, self.job, state, error),
        )

    def finish(
        self,
        conn: psycopg.Connection[Any],
        copying: Collection[str],
        quarantined: Mapping[str, str],
        error: str | None,
    ) -> None:
        """Record the state of each table a run copied: quarantined (`quarantined` says
        why), failed (with `error`) if a chunk is left or its plan was cut short, else
        ready."""
        cut = {name for name, planned in self.plans(conn).items() if not planned}
        left = {c.table for c in self.pending_chunks(conn)} | cut
        for name in copying:
            if name in quarantined:
                self.set_state(conn, name, TableState.QUARANTINED, quarantined[name])
            elif name in left:
                self.set_state(conn, name, TableState.FAILED, error)
            else:
                self.set_state(conn, name, TableState.READY)


def copies_recorded(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether the tables that record copies exist (read without failing a transaction)."""
    names = [_qualified(schema, name).as_string(conn) for name in (TABLES_TABLE, CHUNKS_TABLE)]
    made = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL", names
    ).fetchone()
    return bool(made and made[0])


def copies(conn: psycopg.Connection[Any], schema: str, table: str | None = None) -> dict[str, int]:
    """Per table (or `table` alone), the LSN of the snapshot of its last copy that ended
    (the earliest of its chunks' snapshots); the tables that record copies must exist
    (`copies_recorded`)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT t.table_name, (min(c.snapshot_lsn) - '0/0'::pg_lsn)::bigint FROM {} t "
            "JOIN {} c ON c.job = t.job AND c.table_name = t.table_name "
            "WHERE (t.table_name = %s OR %s::text IS NULL) AND t.state = %s AND c.done "
            "GROUP BY t.table_name"
        ).format(_qualified(schema, TABLES_TABLE), _qualified(schema, CHUNKS_TABLE)),
        (table, table, TableState.READY),
    ).fetchall()
    return {name: int(lsn) for name, lsn in rows}


def copied_at(conn: psycopg.Connection[Any], schema: str, table: str) -> int | None:
    """The LSN of the snapshot of `table`'s last copy that ended (`copies`), or None."""
    return copies(conn, schema, table).get(table)
