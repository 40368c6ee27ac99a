"""Test harness: real databases, one private database/slot/publication per test.

Postgres: CDC_TEST_PG_DSN, else a testcontainers Postgres when a Docker daemon answers,
else a private cluster from local server binaries. ClickHouse: CDC_TEST_CLICKHOUSE_URL,
else testcontainers ClickHouse with Docker, else the embedded engine (chdb).
Tests under tests/integration are marked `integration`, under tests/unit `unit`.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql

pytest.register_assert_rewrite("tests.pipeline")

from cdc.dev import localstack  # noqa: E402
from cdc.ops import logs, preflight  # noqa: E402
from cdc.sinks.clickhouse import client as clickhouse  # noqa: E402
from tests.harness import (  # noqa: E402
    FIXTURE_ORIGINS,
    ClickHouseServer,
    PgServer,
    drop_database,
)

HERE = Path(__file__).parent

# Daemons running in this process log to stderr, as the CLI has them do: never into the
# stdout that a CLI test reads a document from.
logs.configure(json=False)


@pytest.fixture(autouse=True)
def _process_state_restored() -> Iterator[None]:
    """What `cdc run` sets for its process, as a test that invokes it in this one leaves
    it: the logging (onto the runner's stream, closed after the invocation: every later
    log line would fail) and the handlers of SIGTERM and SIGINT."""
    saved = structlog.get_config()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    structlog.configure(**saved)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(HERE).parts[0]
        if tier in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, tier))


def _docker_available() -> bool:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host[len("unix://") :]).exists():
        return False
    import docker

    try:
        client = docker.from_env(timeout=2)
    except (docker.errors.DockerException, OSError):
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if dsn := os.environ.get("CDC_TEST_PG_DSN"):
        with psycopg.connect(dsn, autocommit=True) as conn:
            preflight.check_source(conn)
        yield PgServer(dsn, "CDC_TEST_PG_DSN")
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16", driver=None).with_command(
            "postgres -c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64"
        )
        with container:
            yield PgServer(container.get_connection_url(), "testcontainers")
        return
    root = Path(tempfile.mkdtemp(prefix="cdc-test-pg-"))
    root.chmod(0o755)
    cluster = localstack.LocalCluster(root / "pg", localstack.free_port())
    cluster.start()
    try:

        def restart() -> None:
            cluster.stop(mode="immediate")
            cluster.start()

        yield PgServer(cluster.paths.dsn, f"local binaries in {cluster.bindir}", restart)
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh database for this test; its slots and the database are dropped afterwards."""
    dbname = f"cdc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield pg_server.dsn_for(dbname)
    finally:
        drop_database(pg_server.dsn, dbname)


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    if url := os.environ.get("CDC_TEST_CLICKHOUSE_URL"):
        client = clickhouse.connect(url)
        yield ClickHouseServer(url, "CDC_TEST_CLICKHOUSE_URL", client)
        client.close()
        return
    if _docker_available():
        from testcontainers.clickhouse import ClickHouseContainer

        with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as container:
            url = (
                f"http://{container.username}:{container.password}@"
                f"{container.get_container_host_ip()}:{container.get_exposed_port(8123)}"
            )
            client = clickhouse.connect(url)
            yield ClickHouseServer(url, "testcontainers", client)
            client.close()
        return
    url = f"chdb://{tmp_path_factory.mktemp('clickhouse')}"
    client = clickhouse.connect(url)
    yield ClickHouseServer(url, "embedded chdb", client)
    client.close()


@pytest.fixture
def ch_database(clickhouse_server: ClickHouseServer) -> Iterator[str]:
    """A fresh ClickHouse database for this test, dropped afterwards."""
    name = f"cdc_test_{uuid.uuid4().hex[:12]}"
    client = clickhouse_server.client
    client.command(f"CREATE DATABASE {clickhouse.quote_identifier(name)}")
    try:
        yield name
    finally:
        client.command(f"DROP DATABASE IF EXISTS {clickhouse.quote_identifier(name)} SYNC")


@pytest.fixture
def ch(clickhouse_server: ClickHouseServer) -> Any:
    return clickhouse_server.client


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name, origin in FIXTURE_ORIGINS.items():
        terminalreporter.write_line(f"{name} fixture: {origin}")
