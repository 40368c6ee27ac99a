"""The coaching API served by uvicorn against a real Postgres, talked to over HTTP.

Each test gets a fresh database (`pg_dsn`), a tokens file with a random bearer token, an
app started on a free port in a background thread, and `httpx` clients sending the token.
Refused requests are checked to leave both tables unchanged; racing clients are checked
against invariants that lost updates would break.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from structlog.testing import capture_logs

from api.app import create_app
from api.auth import TOKENS_ENV, UNAUTHORIZED
from api.migrations import MIGRATIONS, migrate
from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import Settings
from tests.harness import PgServer

TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 20.0
CRITERIA = [f"criterion-{n}" for n in range(1, 7)]


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn on a free local port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, ws="none", lifespan="on", log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the API did not start (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not start in time")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT_S)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CDC_* variables and no local-stack record: settings come from the test only."""
    for name in list(os.environ):
        if name.startswith("CDC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_tokens(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(0o600)
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def tokens_file(tmp_path: Path, token: str) -> Path:
    return write_tokens(tmp_path / "api_tokens", "# the API's bearer tokens", "", token)


@pytest.fixture
def settings(pg_dsn: str, clean_env: None, tokens_file: Path) -> Settings:
    return Settings(source_dsn=SecretStr(pg_dsn), api_tokens_file=tokens_file)


@pytest.fixture
def api(settings: Settings, token: str) -> Iterator[httpx.Client]:
    with (
        serve(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT_S, headers=bearer(token)) as client,
    ):
        yield client


Snapshot = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def snapshot(pg: psycopg.Connection[Any], schema: str = "director") -> Snapshot:
    cards = pg.execute(
        psycopg.sql.SQL("SELECT * FROM {} ORDER BY id").format(
            psycopg.sql.Identifier(schema, "scorecards")
        )
    ).fetchall()
    scores = pg.execute(
        psycopg.sql.SQL("SELECT * FROM {} ORDER BY scorecard_id, criterion_id").format(
            psycopg.sql.Identifier(schema, "scores")
        )
    ).fetchall()
    return cards, scores


def new_card(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"agent_id": str(uuid.uuid4()), "template_id": str(uuid.uuid4()), **fields}
    response = client.post("/scorecards", json=body)
    assert response.status_code == 201, response.text
    card: dict[str, Any] = response.json()
    return card


def total_of(card: dict[str, Any]) -> Decimal | None:
    if not card["scores"]:
        return None
    return sum((Decimal(str(s["score"])) for s in card["scores"]), Decimal(0))


def created_draft(api: httpx.Client) -> dict[str, Any]:
    """A new scorecard, checked to be an empty draft as created."""
    agent, template = uuid.uuid4(), uuid.uuid4()
    created = api.post(
        "/scorecards",
        json={"agent_id": str(agent), "template_id": str(template), "notes": "first call"},
    )
    assert created.status_code == 201, created.text
    card: dict[str, Any] = created.json()
    card_id = card["id"]
    assert created.headers["location"] == f"/scorecards/{card_id}"
    assert card["agent_id"] == str(agent)
    assert card["template_id"] == str(template)
    assert card["reviewer_id"] is None
    assert card["status"] == "draft"
    assert card["total_score"] is None
    assert card["submitted_at"] is None
    assert card["scores"] == []
    assert api.get(f"/scorecards/{card_id}").json() == card
    return card


def test_lifecycle(api: httpx.Client, pg: psycopg.Connection[Any]) -> None:
    card = created_draft(api)
    card_id = card["id"]
    reviewer = uuid.uuid4()
    patched = api.patch(
        f"/scorecards/{card_id}", json={"reviewer_id": str(reviewer), "notes": "calm, clear"}
    )
    assert patched.status_code == 200, patched.text
    after_patch = patched.json()
    assert after_patch["reviewer_id"] == str(reviewer)
    assert after_patch["notes"] == "calm, clear"
    assert after_patch["updated_at"] > card["updated_at"]
    assert after_patch["created_at"] == card["created_at"]
    cleared = api.patch(f"/scorecards/{card_id}", json={"notes": None}).json()
    assert cleared["notes"] is None
    assert cleared["reviewer_id"] == str(reviewer)

    scored = api.put(
        f"/scorecards/{card_id}/scores",
        json=[
            {"criterion_id": "greeting", "score": 4.5, "comment": "warm"},
            {"criterion_id": "empathy", "score": "3.25"},
            {"criterion_id": "resolution", "score": 2},
        ],
    )
    assert scored.status_code == 200, scored.text
    with_scores = scored.json()
    assert [s["criterion_id"] for s in with_scores["scores"]] == [
        "empathy",
        "greeting",
        "resolution",
    ]
    assert with_scores["total_score"] == 9.75
    assert with_scores["updated_at"] > cleared["updated_at"]

    # Replacing the set: one kept unchanged, one changed, one removed, one added.
    rescored = api.put(
        f"/scorecards/{card_id}/scores",
        json=[
            {"criterion_id": "greeting", "score": 4.5, "comment": "warm"},
            {"criterion_id": "empathy", "score": 1},
            {"criterion_id": "closing", "score": 0, "comment": "forgot"},
        ],
    ).json()
    scores = {s["criterion_id"]: s for s in rescored["scores"]}
    assert set(scores) == {"closing", "empathy", "greeting"}
    assert rescored["total_score"] == 5.5
    before = {s["criterion_id"]: s for s in with_scores["scores"]}
    assert scores["greeting"]["updated_at"] == before["greeting"]["updated_at"]
    assert scores["empathy"]["updated_at"] > before["empathy"]["updated_at"]
    row = pg.execute(
        "SELECT total_score, (SELECT sum(score) FROM director.scores WHERE scorecard_id = id) "
        "FROM director.scorecards WHERE id = %s",
        (card_id,),
    ).fetchone()
    assert row == (Decimal("5.5"), Decimal("5.5"))

    submitted = api.post(f"/scorecards/{card_id}/submit")
    assert submitted.status_code == 200, submitted.text
    final = submitted.json()
    assert final["status"] == "submitted"
    assert final["submitted_at"] is not None
    assert final["submitted_at"] == final["updated_at"]
    assert final["scores"] == rescored["scores"]
    assert api.get(f"/scorecards/{card_id}").json() == final

    refused = api.patch(f"/scorecards/{card_id}", json={"notes": "too late"})
    assert refused.status_code == 409
    assert api.get(f"/scorecards/{card_id}").json() == final

    deleted = api.delete(f"/scorecards/{card_id}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert "content-type" not in deleted.headers
    gone = api.get(f"/scorecards/{card_id}")
    assert gone.status_code == 404
    assert gone.json() == {"detail": f"scorecard {card_id} not found"}
    assert snapshot(pg) == ([], [])


def test_empty_score_set_clears_the_total(api: httpx.Client) -> None:
    card = new_card(api)
    api.put(f"/scorecards/{card['id']}/scores", json=[{"criterion_id": "a", "score": 1}])
    cleared = api.put(f"/scorecards/{card['id']}/scores", json=[])
    assert cleared.status_code == 200
    assert cleared.json()["scores"] == []
    assert cleared.json()["total_score"] is None


@dataclass(frozen=True)
class Refusal:
    method: str
    path: str
    status: int
    expect: str
    body: Any = None
    content: str | None = None


MISSING = uuid.UUID("00000000-0000-4000-8000-000000000000")
NEW = {"agent_id": str(uuid.uuid4()), "template_id": str(uuid.uuid4())}
REFUSALS = {
    "create: bad uuid": Refusal("POST", "/scorecards", 422, "agent_id", {**NEW, "agent_id": "x"}),
    "create: no template": Refusal(
        "POST", "/scorecards", 422, "template_id", {"agent_id": NEW["agent_id"]}
    ),
    "create: server-owned field": Refusal(
        "POST", "/scorecards", 422, "Extra inputs", {**NEW, "status": "submitted"}
    ),
    "create: NUL in notes": Refusal("POST", "/scorecards", 422, "NUL", {**NEW, "notes": "a\x00"}),
    "create: not JSON": Refusal("POST", "/scorecards", 422, "json_invalid", content="{"),
    "get: bad uuid": Refusal("GET", "/scorecards/42", 422, "scorecard_id"),
    "get: missing": Refusal("GET", "/scorecards/{missing}", 404, "scorecard {missing} not found"),
    "patch: empty": Refusal("PATCH", "/scorecards/{draft}", 422, "nothing to change", {}),
    "patch: total_score": Refusal(
        "PATCH", "/scorecards/{draft}", 422, "total_score cannot be patched", {"total_score": 1}
    ),
    "patch: status": Refusal(
        "PATCH", "/scorecards/{draft}", 422, "status cannot be patched", {"status": "draft"}
    ),
    "patch: bad reviewer uuid": Refusal(
        "PATCH", "/scorecards/{draft}", 422, "reviewer_id", {"reviewer_id": "nope"}
    ),
    "patch: bad path uuid": Refusal("PATCH", "/scorecards/x", 422, "scorecard_id", {"notes": ""}),
    "patch: missing": Refusal(
        "PATCH", "/scorecards/{missing}", 404, "scorecard {missing} not found", {"notes": "x"}
    ),
    "patch: submitted": Refusal(
        "PATCH", "/scorecards/{submitted}", 409, "cannot be edited", {"notes": "x"}
    ),
    "scores: negative": Refusal(
        "PUT",
        "/scorecards/{draft}/scores",
        422,
        "greater than or equal to 0",
        [{"criterion_id": "a", "score": 1}, {"criterion_id": "b", "score": -0.5}],
    ),
    "scores: repeated criterion": Refusal(
        "PUT",
        "/scorecards/{draft}/scores",
        422,
        "repeated: a",
        [{"criterion_id": "a", "score": 1}, {"criterion_id": "a", "score": 2}],
    ),
    "scores: NaN": Refusal(
        "PUT", "/scorecards/{draft}/scores", 422, "finite", [{"criterion_id": "a", "score": "NaN"}]
    ),
    "scores: too precise": Refusal(
        "PUT",
        "/scorecards/{draft}/scores",
        422,
        "decimal places",
        [{"criterion_id": "a", "score": 1.23456}],
    ),
    "scores: empty criterion": Refusal(
        "PUT", "/scorecards/{draft}/scores", 422, "criterion_id", [{"criterion_id": "", "score": 1}]
    ),
    "scores: not a list": Refusal(
        "PUT", "/scorecards/{draft}/scores", 422, "list", {"criterion_id": "a", "score": 1}
    ),
    "scores: missing": Refusal(
        "PUT", "/scorecards/{missing}/scores", 404, "scorecard {missing} not found", []
    ),
    "scores: submitted": Refusal(
        "PUT", "/scorecards/{submitted}/scores", 409, "can no longer be changed", []
    ),
    "submit: twice": Refusal(
        "POST", "/scorecards/{submitted}/submit", 409, "cannot be submitted again"
    ),
    "submit: missing": Refusal(
        "POST", "/scorecards/{missing}/submit", 404, "scorecard {missing} not found"
    ),
    "submit: bad uuid": Refusal("POST", "/scorecards/1-2-3/submit", 422, "scorecard_id"),
    "delete: missing": Refusal("DELETE", "/scorecards/{missing}", 404, "scorecard {missing} not"),
    "delete: bad uuid": Refusal("DELETE", "/scorecards/zzz", 422, "scorecard_id"),
}


@dataclass(frozen=True)
class RefusalWorld:
    """One API and database shared by the refusal cases: none of them may change it."""

    client: httpx.Client
    pg: psycopg.Connection[Any]
    ids: dict[str, Any]


@pytest.fixture(scope="module")
def refusal_world(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RefusalWorld]:
    dbname = f"cdc_test_api_{uuid.uuid4().hex[:12]}"
    token = secrets.token_urlsafe(32)
    tokens_file = write_tokens(tmp_path_factory.mktemp("refusals") / "api_tokens", token)
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    dsn = pg_server.dsn_for(dbname)
    try:
        with pytest.MonkeyPatch.context() as env:
            for name in list(os.environ):
                if name.startswith("CDC_"):
                    env.delenv(name)
            settings = Settings(source_dsn=SecretStr(dsn), api_tokens_file=tokens_file)
        with (
            serve(create_app(settings)) as url,
            httpx.Client(base_url=url, timeout=TIMEOUT_S, headers=bearer(token)) as client,
            psycopg.connect(dsn, autocommit=True) as pg,
        ):
            draft = new_card(client, notes="draft")
            client.put(
                f"/scorecards/{draft['id']}/scores", json=[{"criterion_id": "a", "score": 3}]
            )
            submitted = new_card(client)
            client.put(
                f"/scorecards/{submitted['id']}/scores", json=[{"criterion_id": "b", "score": 2}]
            )
            assert client.post(f"/scorecards/{submitted['id']}/submit").status_code == 200
            ids = {"draft": draft["id"], "submitted": submitted["id"], "missing": MISSING}
            yield RefusalWorld(client, pg, ids)
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            admin.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(dbname)
                )
            )


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_requests_change_nothing(refusal_world: RefusalWorld, refusal: Refusal) -> None:
    client, pg, ids = refusal_world.client, refusal_world.pg, refusal_world.ids
    before = snapshot(pg)
    assert len(before[0]) == 2
    assert len(before[1]) == 2

    response = client.request(
        refusal.method,
        refusal.path.format(**ids),
        json=refusal.body,
        content=refusal.content,
        headers={"content-type": "application/json"},
    )

    assert response.status_code == refusal.status, response.text
    body = response.json()
    if refusal.status == 422:
        assert isinstance(body["detail"], list)
        assert refusal.expect in json.dumps(body)
    else:
        assert refusal.expect.format(**ids) in body["detail"]
    assert snapshot(pg) == before


def test_docs_and_health(api: httpx.Client) -> None:
    docs = api.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    spec = api.get("/openapi.json").json()
    assert spec["info"]["title"] == "Coaching API"
    assert set(spec["paths"]) == {
        "/healthz",
        "/scorecards",
        "/scorecards/{scorecard_id}",
        "/scorecards/{scorecard_id}/scores",
        "/scorecards/{scorecard_id}/submit",
    }
    assert set(spec["paths"]["/scorecards/{scorecard_id}"]) == {"get", "patch", "delete"}
    assert "409" in spec["paths"]["/scorecards/{scorecard_id}/submit"]["post"]["responses"]
    schemes = spec["components"]["securitySchemes"]
    assert [scheme["scheme"] for scheme in schemes.values()] == ["bearer"]
    (scheme_name,) = schemes
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path == "/healthz":
                assert "security" not in operation
            else:
                assert operation["security"] == [{scheme_name: []}], (method, path)
                assert "401" in operation["responses"], (method, path)
    health = api.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}


PROTECTED = [
    ("POST", "/scorecards", NEW),
    ("GET", "/scorecards/{card}", None),
    ("PATCH", "/scorecards/{card}", {"notes": "changed"}),
    ("PUT", "/scorecards/{card}/scores", [{"criterion_id": "a", "score": 1}]),
    ("POST", "/scorecards/{card}/submit", None),
    ("DELETE", "/scorecards/{card}", None),
]
WRONG_CREDENTIALS: dict[str, Callable[[str], dict[str, str]]] = {
    "no header": lambda token: {},
    "wrong token": lambda token: bearer(secrets.token_urlsafe(32)),
    "the token's prefix": lambda token: bearer(token[:-1]),
    "the token and more": lambda token: bearer(token + "x"),
    "bearer without a token": lambda token: {"Authorization": "Bearer"},
    "basic scheme": lambda token: {"Authorization": f"Basic {token}"},
    "no scheme": lambda token: {"Authorization": token},
}


@pytest.mark.parametrize("credentials", WRONG_CREDENTIALS.values(), ids=WRONG_CREDENTIALS.keys())
def test_requests_without_the_right_token_are_refused(
    api: httpx.Client,
    pg: psycopg.Connection[Any],
    token: str,
    credentials: Callable[[str], dict[str, str]],
) -> None:
    card = new_card(api)
    before = snapshot(pg)
    with httpx.Client(
        base_url=api.base_url, timeout=TIMEOUT_S, headers=credentials(token)
    ) as stranger:
        for method, path, body in PROTECTED:
            response = stranger.request(method, path.format(card=card["id"]), json=body)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json() == {"detail": UNAUTHORIZED}
            assert token not in response.text
            assert token not in str(response.headers)
        health = stranger.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
    assert snapshot(pg) == before
    assert api.get(f"/scorecards/{card['id']}").json() == card


def test_health_needs_no_token(api: httpx.Client) -> None:
    with httpx.Client(base_url=api.base_url, timeout=TIMEOUT_S) as stranger:
        health = stranger.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}


def test_every_token_in_the_file_is_accepted(
    pg_dsn: str, pg: psycopg.Connection[Any], clean_env: None, tmp_path: Path
) -> None:
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    comment = "# rotation: the old token until clients have the new one"
    tokens_file = write_tokens(tmp_path / "api_tokens", comment, old, "", f"  {new}  ")
    settings = Settings(source_dsn=SecretStr(pg_dsn), api_tokens_file=tokens_file)
    with (
        serve(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT_S) as client,
    ):
        created = client.post("/scorecards", json=NEW, headers=bearer(old))
        assert created.status_code == 201, created.text
        path = f"/scorecards/{created.json()['id']}"
        for headers in (bearer(old), bearer(new), {"Authorization": f"bearer {new}"}):
            fetched = client.get(path, headers=headers)
            assert fetched.status_code == 200, fetched.text
            assert fetched.json() == created.json()
        for not_a_token in (comment, f"{old} {new}", f"{old}{new}"):
            assert client.get(path, headers=bearer(not_a_token)).status_code == 401
    assert len(snapshot(pg)[0]) == 1


def _unreadable_tokens(directory: Path) -> Path:
    path = directory / "api_tokens"
    path.write_bytes(b"\xff\xfe hunter2, not UTF-8\n")
    return path


STARTUP_REFUSALS: dict[str, tuple[Callable[[Path], Path | None], str]] = {
    "setting unset": (lambda directory: None, f"needs bearer tokens: set {TOKENS_ENV}"),
    "no such file": (lambda directory: directory / "absent", "cannot read .*absent"),
    "a directory": (lambda directory: directory, "cannot read"),
    "only comments and blanks": (
        lambda directory: write_tokens(directory / "api_tokens", "# none yet", "", "   "),
        "holds no token",
    ),
    "not UTF-8": (_unreadable_tokens, "is not UTF-8 text"),
}


@pytest.mark.parametrize(("make", "expect"), STARTUP_REFUSALS.values(), ids=STARTUP_REFUSALS.keys())
def test_start_is_refused_without_tokens(
    pg_dsn: str,
    pg: psycopg.Connection[Any],
    clean_env: None,
    tmp_path: Path,
    make: Callable[[Path], Path | None],
    expect: str,
) -> None:
    settings = Settings(source_dsn=SecretStr(pg_dsn), api_tokens_file=make(tmp_path))
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(CdcError, match=expect) as failure:
        asyncio.run(start())
    assert failure.value.kind is ErrorKind.CONFIG
    message = str(failure.value)
    assert TOKENS_ENV in message
    assert "one token per line" in message
    assert "hunter2" not in message
    # Refused before touching the database: no schema was created.
    schemas = pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'director'").fetchall()
    assert schemas == []


def test_uvicorn_exits_naming_the_missing_setting(pg_dsn: str, tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CDC_")}
    env |= {"CDC_SOURCE_DSN": pg_dsn, "PYTHONPATH": str(Path(__file__).parents[2])}
    started = subprocess.run(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S * 3,
        check=False,
    )
    assert started.returncode != 0
    assert f"needs bearer tokens: set {TOKENS_ENV}" in started.stderr


def test_tokens_never_reach_the_logs(settings: Settings, token: str) -> None:
    wrong = secrets.token_urlsafe(32)
    with (
        capture_logs() as logs,
        serve(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT_S) as client,
    ):
        card = client.post("/scorecards", json=NEW, headers=bearer(token))
        assert card.status_code == 201
        assert client.get(f"/scorecards/{MISSING}", headers=bearer(token)).status_code == 404
        assert client.get("/scorecards/x", headers=bearer(token)).status_code == 422
        refused = client.delete(f"/scorecards/{card.json()['id']}", headers=bearer(wrong))
        assert refused.status_code == 401
        assert client.get(f"/scorecards/{MISSING}").status_code == 401
    assert next(e for e in logs if e["event"] == "api_ready")["api_tokens"] == 1
    unauthorized = [e for e in logs if e["event"] == "api_unauthorized"]
    assert [(e["method"], e["reason"]) for e in unauthorized] == [
        ("DELETE", "wrong bearer token"),
        ("GET", "no bearer token"),
    ]
    captured = repr(logs)
    assert token not in captured
    assert wrong not in captured


def test_module_app_loads_settings_when_it_starts(
    pg_dsn: str,
    pg: psycopg.Connection[Any],
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tokens_file: Path,
    token: str,
) -> None:
    # Building the app connects to nothing and reads no file: both only matter at start.
    create_app(Settings(source_dsn=SecretStr("host=/nonexistent dbname=nothing")))
    from api.app import app

    monkeypatch.setenv("CDC_SOURCE_DSN", pg_dsn)
    monkeypatch.setenv(TOKENS_ENV, str(tokens_file))
    with (
        serve(app) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT_S, headers=bearer(token)) as client,
    ):
        assert client.get("/healthz").json() == {"status": "ok"}
        new_card(client)
    assert len(snapshot(pg)[0]) == 1


def test_start_fails_clearly_without_the_database(clean_env: None, tokens_file: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://coach:s3cret@127.0.0.1:{port}/coaching"
    app = create_app(Settings(source_dsn=SecretStr(dsn), api_tokens_file=tokens_file))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(CdcError, match="cannot connect to the director database") as failure:
        asyncio.run(start())
    assert failure.value.kind is ErrorKind.SOURCE_CONNECTION
    assert "coach:***@127.0.0.1" in str(failure.value)
    assert "s3cret" not in str(failure.value)


def test_custom_schema_name_is_quoted(
    pg_dsn: str, pg: psycopg.Connection[Any], clean_env: None, tokens_file: Path, token: str
) -> None:
    schema = 'Coaching "Director" 2'
    settings = Settings(
        source_dsn=SecretStr(pg_dsn), source_schema=schema, api_tokens_file=tokens_file
    )
    with (
        serve(create_app(settings)) as url,
        httpx.Client(base_url=url, headers=bearer(token)) as client,
    ):
        card = new_card(client)
        scored = client.put(
            f"/scorecards/{card['id']}/scores", json=[{"criterion_id": "x", "score": 7}]
        )
        assert scored.json()["total_score"] == 7
    cards, scores = snapshot(pg, schema)
    assert len(cards) == 1
    assert len(scores) == 1


def versions(pg: psycopg.Connection[Any], schema: str) -> list[int]:
    query = psycopg.sql.SQL("SELECT version FROM {} ORDER BY 1").format(
        psycopg.sql.Identifier(schema, "schema_migrations")
    )
    return [row[0] for row in pg.execute(query)]


def test_migration_is_idempotent(pg: psycopg.Connection[Any]) -> None:
    everything = [m.version for m in MIGRATIONS]
    assert migrate(pg, "director") == everything
    assert migrate(pg, "director") == []
    assert versions(pg, "director") == everything
    tables = pg.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'director' "
        "ORDER BY 1"
    ).fetchall()
    assert tables == [("schema_migrations",), ("scorecards",), ("scores",)]


@pytest.mark.parametrize("attempt", range(3))
def test_migration_runs_concurrently(
    pg_dsn: str, pg: psycopg.Connection[Any], attempt: int
) -> None:
    schema = f"director {attempt}"
    start = threading.Barrier(2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                start.wait()
                results.append(migrate(conn, schema))
        except BaseException as exc:  # noqa: BLE001 - raised again by the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert errors == []
    assert sorted(results) == [[], [m.version for m in MIGRATIONS]]
    assert versions(pg, schema) == [m.version for m in MIGRATIONS]


@dataclass(frozen=True)
class Outcome:
    op: str
    card_id: str
    status: int
    body: Any


ALLOWED = {
    "patch": {200, 404, 409},
    "scores": {200, 404, 409},
    "submit": {200, 404, 409},
    "delete": {204, 404},
    "create": {201},
}
OPS = ["patch", "scores", "submit", "delete", "create"]
OP_WEIGHTS = [30, 35, 12, 10, 13]


def racing_client(
    url: str, token: str, slots: list[str], slots_lock: threading.Lock, seed: int, rounds: int
) -> list[Outcome]:
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    with httpx.Client(base_url=url, timeout=TIMEOUT_S, headers=bearer(token)) as client:
        for _ in range(rounds):
            op = rng.choices(OPS, OP_WEIGHTS)[0]
            slot = rng.randrange(len(slots))
            with slots_lock:
                card_id = slots[slot]
            if op == "patch":
                response = client.patch(f"/scorecards/{card_id}", json={"notes": f"n{seed}"})
            elif op == "scores":
                chosen = rng.sample(CRITERIA, rng.randint(0, len(CRITERIA)))
                scores = [
                    {"criterion_id": c, "score": str(Decimal(rng.randint(0, 1000)) / 100)}
                    for c in chosen
                ]
                response = client.put(f"/scorecards/{card_id}/scores", json=scores)
            elif op == "submit":
                response = client.post(f"/scorecards/{card_id}/submit")
            elif op == "delete":
                response = client.delete(f"/scorecards/{card_id}")
            else:
                response = client.post(
                    "/scorecards",
                    json={"agent_id": str(uuid.uuid4()), "template_id": str(uuid.uuid4())},
                )
                if response.status_code == 201:
                    card_id = response.json()["id"]
                    with slots_lock:
                        slots[slot] = card_id
            json_body = response.headers.get("content-type") == "application/json"
            body = response.json() if json_body and response.content else response.text
            outcomes.append(Outcome(op, card_id, response.status_code, body))
    return outcomes


def test_racing_clients_keep_the_invariants(
    settings: Settings, token: str, pg: psycopg.Connection[Any]
) -> None:
    threads_count, rounds = 8, 60
    with serve(create_app(settings)) as url:
        with httpx.Client(base_url=url, timeout=TIMEOUT_S, headers=bearer(token)) as client:
            slots = [new_card(client)["id"] for _ in range(5)]
        slots_lock = threading.Lock()
        start = threading.Barrier(threads_count)
        results: list[list[Outcome]] = []
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            try:
                start.wait()
                results.append(racing_client(url, token, slots, slots_lock, seed, rounds))
            except BaseException as exc:  # noqa: BLE001 - raised again by the test
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT_S * 4)
    assert errors == []
    outcomes = [outcome for result in results for outcome in result]
    assert len(outcomes) == threads_count * rounds

    unexpected = [o for o in outcomes if o.status not in ALLOWED[o.op]]
    assert unexpected == []
    statuses = Counter(o.status for o in outcomes)
    assert statuses[200] > 0
    assert statuses[409] > 0

    # Every answer is self-consistent: its total is the sum of the scores it shows.
    for outcome in outcomes:
        if outcome.status in (200, 201):
            card = outcome.body
            total = None if card["total_score"] is None else Decimal(str(card["total_score"]))
            assert total == total_of(card), outcome
            assert (card["status"] == "submitted") == (card["submitted_at"] is not None)
    # Two racing submits never both succeed.
    submits = Counter(o.card_id for o in outcomes if o.op == "submit" and o.status == 200)
    assert max(submits.values(), default=0) <= 1

    wrong_totals = pg.execute(
        "SELECT id FROM director.scorecards c WHERE total_score IS DISTINCT FROM "
        "(SELECT sum(score) FROM director.scores s WHERE s.scorecard_id = c.id)"
    ).fetchall()
    assert wrong_totals == []
    wrong_submissions = pg.execute(
        "SELECT id FROM director.scorecards WHERE (status = 'submitted') <> "
        "(submitted_at IS NOT NULL)"
    ).fetchall()
    assert wrong_submissions == []
    # A submitted scorecard's scores are the ones its successful submit answered with.
    submitted_scores = {
        o.card_id: [(s["criterion_id"], Decimal(str(s["score"]))) for s in o.body["scores"]]
        for o in outcomes
        if o.op == "submit" and o.status == 200
    }
    for card_id, expected in submitted_scores.items():
        rows = pg.execute(
            "SELECT criterion_id, score FROM director.scores WHERE scorecard_id = %s "
            "ORDER BY criterion_id",
            (card_id,),
        ).fetchall()
        if pg.execute("SELECT 1 FROM director.scorecards WHERE id = %s", (card_id,)).fetchone():
            assert rows == expected
