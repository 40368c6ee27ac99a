"""The coaching API: a FastAPI app whose routes parse, call the store, and report.

`create_app(settings)` builds the app; nothing connects until it starts. Its lifespan
applies the schema migrations to the director database (`CDC_SOURCE_DSN`), opens a
connection pool for the requests, and closes the pool on shutdown. `app` is the entry point for
`uvicorn api.app:app`; it loads the settings (file, then `CDC_*` environment) when it starts.

Every route but `/healthz` needs `Authorization: Bearer <token>` with a token from the file
`CDC_API_TOKENS_FILE` names (`api.auth`); the app refuses to start without one. A missing or
wrong token is 401 with `WWW-Authenticate: Bearer`.

Rules: only a draft can be changed (patch, scores, submit); a submitted scorecard answers
409 Conflict to those, and can still be deleted. Missing scorecards are 404, invalid input
is 422; an unreachable database, or a transaction the database rolled back (deadlock,
serialization failure), is 503 with `Retry-After`. A refused request changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any, Final
from uuid import UUID

import psycopg
import psycopg.errors
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.auth import UNAUTHORIZED, ApiTokens, load_tokens, require_token
from api.errors import ScorecardError
from api.models import ErrorBody, Health, Scorecard, ScorecardCreate, ScorecardPatch, ScoreSet
from api.store import Pool, ScorecardStore, open_pool, prepare_schema
from cdc.ops.logs import get_logger
from cdc.ops.settings import Settings, load_settings

TITLE: Final = "Coaching API"
UNAVAILABLE: Final = "the director database is unavailable; retry later"
ROLLED_BACK: Final = "the database rolled the request back (deadlock or serialization); retry it"
RETRY_AFTER_S: Final = 1

# `public` needs no token (a load balancer's health check); `router` needs one on every route.
public = APIRouter()
router = APIRouter(
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorBody, "description": UNAUTHORIZED}},
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}
NOT_FOUND_OR_SUBMITTED: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody, "description": "The scorecard is submitted."},
}


def _store(request: Request) -> ScorecardStore:
    store = request.app.state.store
    if not isinstance(store, ScorecardStore):
        raise RuntimeError("the app has not started: no scorecard store")
    return store


Store = Annotated[ScorecardStore, Depends(_store)]


@public.get("/healthz", response_model=Health, responses={503: {"model": ErrorBody}})
def healthz(store: Store) -> Health:
    store.ping()
    return Health(status="ok")


@router.post("/scorecards", status_code=HTTPStatus.CREATED, response_model=Scorecard)
def create_scorecard(body: ScorecardCreate, response: Response, store: Store) -> Scorecard:
    scorecard = store.create(body)
    response.headers["Location"] = f"/scorecards/{scorecard.id}"
    return scorecard


@router.get("/scorecards/{scorecard_id}", response_model=Scorecard, responses=NOT_FOUND)
def get_scorecard(scorecard_id: UUID, store: Store) -> Scorecard:
    return store.get(scorecard_id)


@router.patch(
    "/scorecards/{scorecard_id}", response_model=Scorecard, responses=NOT_FOUND_OR_SUBMITTED
)
def patch_scorecard(scorecard_id: UUID, body: ScorecardPatch, store: Store) -> Scorecard:
    """Change notes and/or reviewer of a draft; `null` clears a field."""
    return store.patch(scorecard_id, body)


@router.put(
    "/scorecards/{scorecard_id}/scores",
    response_model=Scorecard,
    responses=NOT_FOUND_OR_SUBMITTED,
)
def set_scores(scorecard_id: UUID, body: ScoreSet, store: Store) -> Scorecard:
    """Replace the draft's scores with this list and recompute `total_score`, atomically."""
    return store.set_scores(scorecard_id, body.root)


@router.post(
    "/scorecards/{scorecard_id}/submit",
    response_model=Scorecard,
    responses=NOT_FOUND_OR_SUBMITTED,
)
def submit_scorecard(scorecard_id: UUID, store: Store) -> Scorecard:
    return store.submit(scorecard_id)


@router.delete(
    "/scorecards/{scorecard_id}",
    status_code=HTTPStatus.NO_CONTENT,
    response_class=Response,
    responses=NOT_FOUND,
)
def delete_scorecard(scorecard_id: UUID, store: Store) -> None:
    """Delete a scorecard (draft or submitted) and its scores."""
    store.delete(scorecard_id)


async def _scorecard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScorecardError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    get_logger(component="api").warning(
        "director_unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}"
    )
    return _retry_later(UNAVAILABLE)


async def _rolled_back(request: Request, exc: Exception) -> JSONResponse:
    get_logger(component="api").warning(
        "transaction_rolled_back", path=request.url.path, error=f"{type(exc).__name__}: {exc}"
    )
    return _retry_later(ROLLED_BACK)


def _retry_later(detail: str) -> JSONResponse:
    return JSONResponse(
        {"detail": detail},
        status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _start(settings: Settings | None) -> tuple[Pool, ScorecardStore, ApiTokens]:
    resolved = settings if settings is not None else load_settings()
    tokens = load_tokens(resolved.api_tokens_file)
    conninfo, schema = resolved.require_source_dsn(), resolved.source_schema
    applied = prepare_schema(conninfo, schema)
    pool = open_pool(conninfo)
    get_logger(component="api").info(
        "api_ready", schema=schema, migrations_applied=applied, api_tokens=len(tokens.digests)
    )
    return pool, ScorecardStore(pool, schema), tokens


def create_app(settings: Settings | None = None) -> FastAPI:
    """The coaching API. `settings=None` loads them (file, then environment) at start."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool, app.state.store, app.state.tokens = await run_in_threadpool(_start, settings)
        try:
            yield
        finally:
            app.state.store = None
            app.state.tokens = None
            await run_in_threadpool(pool.close)

    app = FastAPI(title=TITLE, lifespan=lifespan)
    app.state.store = None
    app.state.tokens = None
    app.include_router(public)
    app.include_router(router)
    app.add_exception_handler(ScorecardError, _scorecard_error)
    # By SQLSTATE class: 40 (transaction rollback) is transient and nothing was written;
    # any other OperationalError, a pool timeout included, means the database is unreachable.
    app.add_exception_handler(psycopg.errors.TransactionRollback, _rolled_back)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    return app


app = create_app()
