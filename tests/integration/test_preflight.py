"""Preflight findings and `cdc check-grants` against a real server and real roles."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from cdc.cli import app
from cdc.ops import preflight
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, setup_logs

runner = CliRunner()


def test_source_findings_name_each_risk(pg: psycopg.Connection[Any]) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.ok (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE director.nokey (x int)")
    pg.execute("CREATE TABLE director.silent (id int PRIMARY KEY)")
    pg.execute("ALTER TABLE director.silent REPLICA IDENTITY NOTHING")
    pg.execute("CREATE TABLE public.elsewhere (id int PRIMARY KEY)")
    pg.execute(
        "CREATE PUBLICATION p FOR TABLE director.ok, director.nokey, director.silent, "
        "public.elsewhere WITH (publish = 'insert, update')"
    )
    findings = preflight.source_findings(pg, "p", "director")
    text = "\n".join(f"{f.check}: {f.message}" for f in findings)
    assert "max_slot_wal_keep_size: max_slot_wal_keep_size is unlimited" in text
    assert "does not publish delete, truncate" in text
    assert "director.nokey is not replicated: no primary key" in text
    assert "It is in publication 'p', so Postgres refuses its UPDATE and DELETE" in text
    assert "Fix: ALTER TABLE director.nokey ADD PRIMARY KEY (...)" in text
    assert "director.silent is not replicated: REPLICA IDENTITY NOTHING" in text
    assert "Fix: ALTER TABLE director.silent REPLICA IDENTITY DEFAULT" in text
    assert "public.elsewhere is published but outside the source schema" in text
    assert "director.ok" not in text
    assert all(f.level == "warning" for f in findings)


@pytest.fixture
def roles(pg: psycopg.Connection[Any]) -> Iterator[tuple[str, str]]:
    reader, writer = f"reader_{uuid.uuid4().hex[:8]}", f"writer_{uuid.uuid4().hex[:8]}"
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(reader)))
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(writer)))
    yield reader, writer
    for role in (reader, writer):
        pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        pg.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_check_grants_names_what_is_missing_then_passes(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    roles: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    reader, writer = roles
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.a (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE director.b (id int PRIMARY KEY)")
    pg.execute("CREATE PUBLICATION cdc FOR TABLE director.a, director.b")
    pg.execute(sql.SQL("GRANT USAGE ON SCHEMA director TO {}").format(sql.Identifier(reader)))
    pg.execute(sql.SQL("GRANT SELECT ON director.a TO {}").format(sql.Identifier(reader)))
    pg.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(
        sql.Identifier(pg.info.dbname)))  # fmt: skip
    env = {
        "CDC_SOURCE_DSN": make_conninfo(pg_dsn, user=reader),
        "CDC_HISTORIC_DSN": make_conninfo(pg_dsn, user=writer),
        "COLUMNS": "250",
    }
    failing = runner.invoke(app, ["check-grants"], env=env)
    assert failing.exit_code == 1, failing.output
    assert f"ALTER ROLE {reader} WITH REPLICATION" in failing.output
    assert "cannot read director.b" in failing.output
    assert f"role '{writer}' cannot create tables in 'historic'" in failing.output

    pg.execute(sql.SQL("ALTER ROLE {} WITH REPLICATION").format(sql.Identifier(reader)))
    pg.execute(sql.SQL("GRANT SELECT ON director.b TO {}").format(sql.Identifier(reader)))
    pg.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(pg.info.dbname), sql.Identifier(writer)))  # fmt: skip
    passing = runner.invoke(app, ["check-grants"], env=env)
    assert passing.exit_code == 0, passing.output
    assert "error" not in passing.output


def test_the_daemon_logs_its_preflight_findings_once_per_start(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """A setup that runs again (a retry after a failure) does not log the findings again."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.a (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    logs = setup_logs(settings)
    findings = [e for e in logs if e["event"] == "preflight"]
    # This server keeps WAL for a slot without limit: one finding says so, once.
    assert [e["check"] for e in findings] == ["max_slot_wal_keep_size"]
