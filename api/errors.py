"""The coaching API's domain errors: each has a kind, and the kind decides the HTTP status.

The store raises `ScorecardError`; `api.app` turns the kind into a status code with
`HTTP_STATUS`. Raising inside a transaction rolls it back, so a refused request changes
nothing.
"""

from __future__ import annotations

import enum
from http import HTTPStatus
from typing import Final
from uuid import UUID


class ScorecardProblem(enum.Enum):
    NOT_FOUND = "not_found"
    SUBMITTED = "submitted"


HTTP_STATUS: Final[dict[ScorecardProblem, HTTPStatus]] = {
    ScorecardProblem.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ScorecardProblem.SUBMITTED: HTTPStatus.CONFLICT,
}


class ScorecardError(Exception):
    """A request the current state of a scorecard refuses. `kind` selects the status."""

    kind: ScorecardProblem

    def __init__(self, kind: ScorecardProblem, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def status(self) -> HTTPStatus:
        return HTTP_STATUS[self.kind]


def not_found(scorecard_id: UUID) -> ScorecardError:
    return ScorecardError(ScorecardProblem.NOT_FOUND, f"scorecard {scorecard_id} not found")


def already_submitted(scorecard_id: UUID, refused: str) -> ScorecardError:
    return ScorecardError(
        ScorecardProblem.SUBMITTED,
        f"scorecard {scorecard_id} is already submitted; {refused}",
    )
