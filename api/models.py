"""The coaching API's JSON shapes: request bodies (validated) and responses.

Requests forbid unknown fields, so a typo or an attempt to set a server-owned field
(`status`, `total_score`, `submitted_at`) is a 422 rather than silently ignored. Text may not
contain NUL characters (Postgres `text` cannot store them). Scores are non-negative
decimals of at most 12 digits, 4 after the point; totals and scores are JSON numbers in
responses (those bounds keep them exact as doubles). `criterion_id` is text, 1-200
characters: criteria belong to templates owned elsewhere, keyed by uuid or by slug.
"""

from __future__ import annotations

import enum
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    RootModel,
    model_validator,
)

NOTES_MAX_LENGTH: Final = 10_000
COMMENT_MAX_LENGTH: Final = 2_000
CRITERION_ID_MAX_LENGTH: Final = 200
SCORES_MAX_COUNT: Final = 500
SCORE_MAX_DIGITS: Final = 12
SCORE_DECIMAL_PLACES: Final = 4
PATCHABLE_FIELDS: Final = ("notes", "reviewer_id")
DERIVED_FIELDS: Final = ("total_score", "status", "submitted_at", "created_at", "updated_at")


class ScorecardStatus(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


def _unique_criteria(scores: list[ScoreIn]) -> list[ScoreIn]:
    repeated = sorted(key for key, n in Counter(s.criterion_id for s in scores).items() if n > 1)
    if repeated:
        raise ValueError(f"each criterion_id may appear once; repeated: {', '.join(repeated)}")
    return scores


Notes = Annotated[str, Field(max_length=NOTES_MAX_LENGTH), AfterValidator(_no_nul)]
Comment = Annotated[str, Field(max_length=COMMENT_MAX_LENGTH), AfterValidator(_no_nul)]
CriterionId = Annotated[
    str, Field(min_length=1, max_length=CRITERION_ID_MAX_LENGTH), AfterValidator(_no_nul)
]
ScoreValue = Annotated[
    Decimal,
    Field(ge=0, max_digits=SCORE_MAX_DIGITS, decimal_places=SCORE_DECIMAL_PLACES),
]
# Responses carry numbers, not the strings pydantic uses for Decimal by default.
JsonDecimal = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScorecardCreate(_Request):
    agent_id: UUID
    template_id: UUID
    reviewer_id: UUID | None = None
    notes: Notes | None = None


class ScorecardPatch(_Request):
    """A partial update of a draft: only the fields present are written (null clears)."""

    notes: Notes | None = None
    reviewer_id: UUID | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            derived = [name for name in DERIVED_FIELDS if name in data]
            if derived:
                raise ValueError(
                    f"{', '.join(derived)} cannot be patched: total_score is the sum of the "
                    "scores (PUT /scorecards/{id}/scores), status and submitted_at change "
                    "with POST /scorecards/{id}/submit, timestamps are set by the server"
                )
        return data

    @model_validator(mode="after")
    def _not_empty(self) -> ScorecardPatch:
        if not self.model_fields_set:
            raise ValueError(
                f"nothing to change: give at least one of {', '.join(PATCHABLE_FIELDS)}"
            )
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, by column name."""
        return {
            name: getattr(self, name) for name in PATCHABLE_FIELDS if name in self.model_fields_set
        }


class ScoreIn(_Request):
    criterion_id: CriterionId
    score: ScoreValue
    comment: Comment | None = None


class ScoreSet(
    RootModel[
        Annotated[
            list[ScoreIn],
            Field(max_length=SCORES_MAX_COUNT),
            AfterValidator(_unique_criteria),
        ]
    ]
):
    """The complete set of scores of a scorecard; criteria not listed are removed."""

    model_config = ConfigDict(frozen=True)


class Score(BaseModel):
    criterion_id: str
    score: JsonDecimal
    comment: str | None
    updated_at: datetime


class Scorecard(BaseModel):
    id: UUID
    agent_id: UUID
    reviewer_id: UUID | None
    template_id: UUID
    status: ScorecardStatus
    total_score: JsonDecimal | None = Field(
        description="Sum of the scores; null while the scorecard has none."
    )
    notes: str | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    scores: list[Score]


class ErrorBody(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
