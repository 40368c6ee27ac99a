"""SQL of the scorecard store, built by pure functions (schema quoted with `sql.Identifier`).

Statements use named placeholders; `api.store` supplies the values and the transactions.
Every write sets `updated_at = now()` on the rows it changes. A score upsert leaves a row
alone when neither its score nor its comment changes, so an unchanged score produces no
change downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from psycopg import sql

from api.models import ScorecardStatus

SCORECARD_COLUMNS: Final = (
    "id",
    "agent_id",
    "reviewer_id",
    "template_id",
    "status",
    "total_score",
    "notes",
    "created_at",
    "updated_at",
    "submitted_at",
)
SCORE_COLUMNS: Final = ("criterion_id", "score", "comment", "updated_at")
CREATE_COLUMNS: Final = ("agent_id", "template_id", "reviewer_id", "notes")
PATCHABLE_COLUMNS: Final = frozenset({"notes", "reviewer_id"})


def _scorecards(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "scorecards")


def _scores(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "scores")


def _columns(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def _returning_scorecard() -> sql.Composed:
    return sql.SQL(" RETURNING {}").format(_columns(SCORECARD_COLUMNS))


def insert_scorecard(schema: str) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}){}").format(
        _scorecards(schema),
        _columns(CREATE_COLUMNS),
        sql.SQL(", ").join(sql.Placeholder(name) for name in CREATE_COLUMNS),
        _returning_scorecard(),
    )


def select_scorecard(schema: str, for_update: bool) -> sql.Composed:
    """One scorecard by `%(id)s`; `for_update` locks it until the transaction ends."""
    return sql.SQL("SELECT {} FROM {} WHERE id = %(id)s{}").format(
        _columns(SCORECARD_COLUMNS),
        _scorecards(schema),
        sql.SQL(" FOR UPDATE") if for_update else sql.SQL(""),
    )


def select_scores(schema: str) -> sql.Composed:
    return sql.SQL("SELECT {} FROM {} WHERE scorecard_id = %(id)s ORDER BY criterion_id").format(
        _columns(SCORE_COLUMNS), _scores(schema)
    )


def update_scorecard(schema: str, columns: Sequence[str]) -> sql.Composed:
    """Set the given patchable columns (placeholders named after them) of scorecard `%(id)s`."""
    unknown = set(columns) - PATCHABLE_COLUMNS
    if not columns or unknown:
        raise ValueError(f"not patchable columns: {sorted(unknown) or 'none given'}")
    assignments = [
        sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in columns
    ]
    return sql.SQL("UPDATE {} SET {}, updated_at = now() WHERE id = %(id)s{}").format(
        _scorecards(schema), sql.SQL(", ").join(assignments), _returning_scorecard()
    )


def delete_other_scores(schema: str) -> sql.Composed:
    """Remove the scores of `%(id)s` whose criterion is not in the text array `%(keep)s`."""
    return sql.SQL(
        "DELETE FROM {} WHERE scorecard_id = %(id)s AND NOT (criterion_id = ANY(%(keep)s))"
    ).format(_scores(schema))


def upsert_score(schema: str) -> sql.Composed:
    table = _scores(schema)
    return sql.SQL(
        "INSERT INTO {table} (scorecard_id, criterion_id, score, comment) "
        "VALUES (%(id)s, %(criterion_id)s, %(score)s, %(comment)s) "
        "ON CONFLICT (scorecard_id, criterion_id) DO UPDATE "
        "SET score = excluded.score, comment = excluded.comment, updated_at = now() "
        "WHERE ({table}.score, {table}.comment) IS DISTINCT FROM (excluded.score, excluded.comment)"
    ).format(table=table)


def recompute_total(schema: str) -> sql.Composed:
    """Set `total_score` of `%(id)s` to the sum of its scores (null when it has none)."""
    return sql.SQL(
        "UPDATE {} SET total_score = (SELECT sum(score) FROM {} WHERE scorecard_id = %(id)s), "
        "updated_at = now() WHERE id = %(id)s{}"
    ).format(_scorecards(schema), _scores(schema), _returning_scorecard())


def submit_scorecard(schema: str) -> sql.Composed:
    return sql.SQL(
        "UPDATE {} SET status = {}, submitted_at = now(), updated_at = now() WHERE id = %(id)s{}"
    ).format(
        _scorecards(schema), sql.Literal(ScorecardStatus.SUBMITTED.value), _returning_scorecard()
    )


def delete_scorecard(schema: str) -> sql.Composed:
    """Delete `%(id)s`; its scores go with it (ON DELETE CASCADE)."""
    return sql.SQL("DELETE FROM {} WHERE id = %(id)s RETURNING id").format(_scorecards(schema))


def read_only_snapshot() -> sql.SQL:
    """First statement of a read: scorecard and scores from one snapshot."""
    return sql.SQL("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def ping() -> sql.SQL:
    return sql.SQL("SELECT 1")
