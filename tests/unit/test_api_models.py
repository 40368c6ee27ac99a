"""The coaching API's request validation, JSON numbers, pure SQL builders, and bearer-token
parsing and matching (no database)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from api import migrations, queries
from api.auth import ApiTokens, parse_tokens
from api.models import (
    SCORE_DECIMAL_PLACES,
    SCORE_MAX_DIGITS,
    SCORES_MAX_COUNT,
    Scorecard,
    ScorecardCreate,
    ScorecardPatch,
    ScoreIn,
    ScoreSet,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ODD_SCHEMA = 'odd "schema"'
scores = st.decimals(
    min_value=0,
    max_value=Decimal(10 ** (SCORE_MAX_DIGITS - SCORE_DECIMAL_PLACES)) - Decimal("0.0001"),
    places=SCORE_DECIMAL_PLACES,
    allow_nan=False,
    allow_infinity=False,
)


def scorecard(**fields: Any) -> Scorecard:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "agent_id": uuid.uuid4(),
        "reviewer_id": None,
        "template_id": uuid.uuid4(),
        "status": "draft",
        "total_score": None,
        "notes": None,
        "created_at": NOW,
        "updated_at": NOW,
        "submitted_at": None,
        "scores": [],
    }
    return Scorecard.model_validate({**values, **fields})


def test_patch_needs_a_field() -> None:
    with pytest.raises(ValidationError, match="nothing to change"):
        ScorecardPatch.model_validate({})


def test_patch_sends_only_the_fields_given() -> None:
    assert ScorecardPatch.model_validate({"notes": None}).changes() == {"notes": None}
    reviewer = uuid.uuid4()
    assert ScorecardPatch.model_validate({"reviewer_id": str(reviewer)}).changes() == {
        "reviewer_id": reviewer
    }


@pytest.mark.parametrize("field", ["total_score", "status", "submitted_at", "updated_at"])
def test_patch_refuses_server_owned_fields(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} cannot be patched"):
        ScorecardPatch.model_validate({"notes": "x", field: None})


def test_requests_refuse_unknown_fields_and_nul() -> None:
    new = {"agent_id": str(uuid.uuid4()), "template_id": str(uuid.uuid4())}
    with pytest.raises(ValidationError, match="Extra inputs"):
        ScorecardCreate.model_validate({**new, "agnet_id": "typo"})
    with pytest.raises(ValidationError, match="NUL"):
        ScorecardCreate.model_validate({**new, "notes": "a\x00b"})
    with pytest.raises(ValidationError, match="NUL"):
        ScoreIn.model_validate({"criterion_id": "\x00", "score": 1})


@given(st.lists(st.text(min_size=1, max_size=5).filter(lambda s: "\x00" not in s), max_size=20))
def test_score_set_needs_distinct_criteria(criteria: list[str]) -> None:
    payload = [{"criterion_id": criterion, "score": 1} for criterion in criteria]
    if len(set(criteria)) == len(criteria):
        assert [s.criterion_id for s in ScoreSet.model_validate(payload).root] == criteria
    else:
        with pytest.raises(ValidationError, match="repeated"):
            ScoreSet.model_validate(payload)


def test_score_set_is_bounded() -> None:
    too_many = [{"criterion_id": str(n), "score": 0} for n in range(SCORES_MAX_COUNT + 1)]
    with pytest.raises(ValidationError, match="at most"):
        ScoreSet.model_validate(too_many)


@pytest.mark.parametrize("value", [-1, "-0.0001", "NaN", "Infinity", "0.00001", "1e12"])
def test_score_values_refused(value: Any) -> None:
    with pytest.raises(ValidationError):
        ScoreIn.model_validate({"criterion_id": "a", "score": value})


@given(st.lists(scores, max_size=SCORES_MAX_COUNT))
def test_scores_and_totals_are_exact_json_numbers(values: list[Decimal]) -> None:
    total = sum(values, Decimal(0)) if values else None
    card = scorecard(
        total_score=total,
        scores=[
            {"criterion_id": str(n), "score": v, "comment": None, "updated_at": NOW}
            for n, v in enumerate(values)
        ],
    )
    decoded = json.loads(card.model_dump_json(), parse_float=Decimal)
    assert [s["score"] for s in decoded["scores"]] == values
    assert decoded["total_score"] == total


def test_sql_quotes_the_schema() -> None:
    quoted = '"odd ""schema"""'
    statements = [
        queries.insert_scorecard(ODD_SCHEMA),
        queries.select_scorecard(ODD_SCHEMA, for_update=True),
        queries.select_scores(ODD_SCHEMA),
        queries.update_scorecard(ODD_SCHEMA, ["notes"]),
        queries.delete_other_scores(ODD_SCHEMA),
        queries.upsert_score(ODD_SCHEMA),
        queries.recompute_total(ODD_SCHEMA),
        queries.submit_scorecard(ODD_SCHEMA),
        queries.delete_scorecard(ODD_SCHEMA),
        migrations.create_schema(ODD_SCHEMA),
        migrations.create_version_table(ODD_SCHEMA),
        *migrations.scorecard_tables(ODD_SCHEMA),
    ]
    for statement in statements:
        assert quoted in statement.as_string()


def test_locking_is_explicit() -> None:
    assert queries.select_scorecard("s", for_update=True).as_string().endswith(" FOR UPDATE")
    assert "FOR UPDATE" not in queries.select_scorecard("s", for_update=False).as_string()


@pytest.mark.parametrize("columns", [[], ["total_score"], ["notes", "status"]])
def test_only_patchable_columns_are_updated(columns: list[str]) -> None:
    with pytest.raises(ValueError, match="not patchable"):
        queries.update_scorecard("s", columns)


def test_migration_lock_is_per_schema() -> None:
    assert migrations.lock("a").as_string() != migrations.lock("b").as_string()
    assert [m.version for m in migrations.MIGRATIONS] == sorted(
        {m.version for m in migrations.MIGRATIONS}
    )


def test_tokens_file_lines() -> None:
    text = "# rotated monthly\n\n  first-token  \n\t\n#second-token\nthird # not a comment\r\n"
    assert parse_tokens(text) == ["first-token", "third # not a comment"]
    assert parse_tokens("") == []
    assert parse_tokens("# only\n   \n") == []


@given(st.lists(st.text(min_size=1).map(str.strip).filter(bool), min_size=1, max_size=5))
def test_every_token_matches_and_nothing_else(tokens: list[str]) -> None:
    accepted = ApiTokens.of(tokens)
    assert len(accepted.digests) == len(tokens)
    for token in tokens:
        assert accepted.accepts(token)
        if token + "x" not in tokens:
            assert not accepted.accepts(token + "x")
        if token[:-1] not in tokens:
            assert not accepted.accepts(token[:-1])


def test_token_matching_keeps_no_token() -> None:
    tokens = ApiTokens.of(["s3cret-token", "another-one"])
    assert not tokens.accepts("")
    assert not tokens.accepts("S3CRET-TOKEN")
    assert repr(tokens) == "ApiTokens(2 tokens)"
    assert all(b"s3cret" not in digest for digest in tokens.digests)
