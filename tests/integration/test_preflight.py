"""Preflight findings and `cdc check-grants` against a real server and real roles."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
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
from cdc.dev import localstack
from cdc.ops import preflight
from tests.harness import ClickHouseServer, PgServer
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
    findings = preflight.source_findings(pg, "p", "director", "s")
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


@pytest.fixture
def standby_dsn(pg_server: PgServer) -> Iterator[str]:
    """A streaming standby of the test server (pg_basebackup -R), with the local binaries."""
    if pg_server.restart is None:
        pytest.skip("a standby is made with the local server binaries")
    bindir = localstack.find_bindir()
    # Outside pytest's own directory, which the server's OS user may not enter.
    root = Path(tempfile.mkdtemp(prefix="cdc-standby-"))
    data = root / "data"
    if os.geteuid() == 0:
        user = pwd.getpwnam(localstack.SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)

    def run(*args: str) -> None:
        command = [str(bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", localstack.SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{args[0]}: {done.stderr}"

    port = localstack.free_port()
    run(
        "pg_basebackup",
        "-d",
        pg_server.dsn,
        "-D",
        str(data),
        "-R",
        "--no-sync",
        "--checkpoint=fast",
    )
    run("pg_ctl", "start", "-w", "-D", str(data), "-l", str(root / "log"),
        "-o", f"-p {port} -k {root}")  # fmt: skip
    try:
        yield f"postgresql://{localstack.SERVER_USER}@127.0.0.1:{port}/postgres"
    finally:
        run("pg_ctl", "stop", "-m", "immediate", "-D", str(data))
        shutil.rmtree(root, ignore_errors=True)


def test_a_standby_is_refused_as_the_source_naming_the_primary(
    pg_dsn: str, standby_dsn: str, clickhouse_server: ClickHouseServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Pointed at a read replica, every command says so instead of failing on the first
    write Postgres refuses there (a raw `ReadOnlySqlTransaction` traceback)."""
    monkeypatch.chdir(tmp_path)
    env = {"CDC_SOURCE_DSN": standby_dsn, "CDC_HISTORIC_DSN": pg_dsn,
           "CDC_CLICKHOUSE_URL": clickhouse_server.url}  # fmt: skip
    ran = runner.invoke(app, ["run", "--log-format", "json"], env=env)
    assert ran.exit_code == 2, ran.output
    failed = next(json.loads(line) for line in ran.output.splitlines() if "daemon_failed" in line)
    assert "the source is a standby" in failed["error"]
    assert "point CDC_SOURCE_DSN at the primary" in failed["error"]
    for command in (["publication", "create"], ["slot", "create"], ["backfill"]):
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 1, (command, result.output)
        assert "the source is a standby" in result.output, command
