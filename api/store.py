"""Scorecards in the director schema: each API write is one transaction, and nothing else.

The store knows only the director schema (the CDC daemon copies changes onward). A write
that checks the scorecard's state before changing it (patch, set scores, submit) first
locks the scorecard row with `SELECT ... FOR UPDATE`, so racing requests on one scorecard
run one after the other: two submits cannot both succeed, and `total_score` is always
recomputed from the scores of the same transaction. Deleting needs no check: the DELETE
itself takes the row lock, and its scores go by `ON DELETE CASCADE`. A refusal raises
`ScorecardError` inside the transaction, which rolls it back. Reads run in one
`REPEATABLE READ` snapshot so a scorecard and its scores always agree.

On start, `prepare_schema` migrates over one plain connection (so a wrong DSN fails at
once, with a clear message), then `open_pool` opens the pool the requests use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from api import queries
from api.errors import already_submitted, not_found
from api.migrations import migrate
from api.models import Scorecard, ScorecardCreate, ScorecardPatch, ScorecardStatus, ScoreIn
from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url

APPLICATION_NAME: Final = "coaching-api"
POOL_MIN_SIZE: Final = 1
POOL_MAX_SIZE: Final = 10
POOL_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 10
HEALTH_TIMEOUT_S: Final = 2.0

Pool = ConnectionPool[psycopg.Connection[Any]]


def prepare_schema(conninfo: str, schema: str) -> list[int]:
    """Connect once, outside any pool, and migrate; return the migrations applied.

    A connection failure is a `CdcError` that names the database (password redacted).
    """
    try:
        conn = psycopg.connect(
            conninfo,
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.OperationalError as exc:
        raise CdcError(
            ErrorKind.SOURCE_CONNECTION,
            f"cannot connect to the director database {redact_url(conninfo)}: {exc}",
        ) from exc
    with conn:
        return migrate(conn, schema)


def open_pool(conninfo: str) -> Pool:
    """A pool of autocommit connections (transactions are explicit), checked on checkout."""
    pool: Pool = ConnectionPool(
        conninfo,
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        timeout=POOL_TIMEOUT_S,
        kwargs={"autocommit": True, "application_name": APPLICATION_NAME},
        check=ConnectionPool.check_connection,
        name=APPLICATION_NAME,
        open=False,
    )
    pool.open(wait=True, timeout=POOL_TIMEOUT_S)
    return pool


class ScorecardStore:
    def __init__(self, pool: Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def ping(self) -> None:
        with self._pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
            conn.execute(queries.ping())

    def create(self, new: ScorecardCreate) -> Scorecard:
        with self._transaction() as conn:
            row = _one(conn, queries.insert_scorecard(self._schema), new.model_dump())
            return Scorecard.model_validate({**row, "scores": []})

    def get(self, scorecard_id: UUID) -> Scorecard:
        with self._transaction() as conn:
            conn.execute(queries.read_only_snapshot())
            row = _maybe_one(
                conn, queries.select_scorecard(self._schema, for_update=False), {"id": scorecard_id}
            )
            if row is None:
                raise not_found(scorecard_id)
            return self._with_scores(conn, row)

    def patch(self, scorecard_id: UUID, patch: ScorecardPatch) -> Scorecard:
        changes = patch.changes()
        with self._transaction() as conn:
            self._lock_draft(conn, scorecard_id, "a submitted scorecard cannot be edited")
            row = _one(
                conn,
                queries.update_scorecard(self._schema, list(changes)),
                {**changes, "id": scorecard_id},
            )
            return self._with_scores(conn, row)

    def set_scores(self, scorecard_id: UUID, scores: Sequence[ScoreIn]) -> Scorecard:
        """Make the scorecard's scores exactly `scores` and recompute its total."""
        with self._transaction() as conn:
            self._lock_draft(conn, scorecard_id, "its scores can no longer be changed")
            conn.execute(
                queries.delete_other_scores(self._schema),
                {"id": scorecard_id, "keep": [score.criterion_id for score in scores]},
            )
            if scores:
                with conn.cursor() as cur:
                    cur.executemany(
                        queries.upsert_score(self._schema),
                        [{**score.model_dump(), "id": scorecard_id} for score in scores],
                    )
            row = _one(conn, queries.recompute_total(self._schema), {"id": scorecard_id})
            return self._with_scores(conn, row)

    def submit(self, scorecard_id: UUID) -> Scorecard:
        with self._transaction() as conn:
            self._lock_draft(conn, scorecard_id, "it cannot be submitted again")
            row = _one(conn, queries.submit_scorecard(self._schema), {"id": scorecard_id})
            return self._with_scores(conn, row)

    def delete(self, scorecard_id: UUID) -> None:
        with self._transaction() as conn:
            row = _maybe_one(conn, queries.delete_scorecard(self._schema), {"id": scorecard_id})
            if row is None:
                raise not_found(scorecard_id)

    def _lock_draft(self, conn: psycopg.Connection[Any], scorecard_id: UUID, refused: str) -> None:
        """Lock the scorecard until the transaction ends; refuse if missing or submitted."""
        row = _maybe_one(
            conn, queries.select_scorecard(self._schema, for_update=True), {"id": scorecard_id}
        )
        if row is None:
            raise not_found(scorecard_id)
        if row["status"] == ScorecardStatus.SUBMITTED:
            raise already_submitted(scorecard_id, refused)

    def _with_scores(self, conn: psycopg.Connection[Any], row: DictRow) -> Scorecard:
        with conn.cursor(row_factory=dict_row) as cur:
            scores = cur.execute(queries.select_scores(self._schema), {"id": row["id"]}).fetchall()
        return Scorecard.model_validate({**row, "scores": scores})


def _maybe_one(
    conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any]
) -> DictRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchone()


def _one(conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any]) -> DictRow:
    row = _maybe_one(conn, query, params)
    if row is None:
        raise RuntimeError(f"expected a row from {query!r}")
    return row
