"""The local stack's bad setups fail with a clear message."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cdc.dev import localstack
from cdc.errors import CdcError, ErrorKind
from cdc.ops import preflight


@pytest.fixture
def cluster_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="cdc-test-stack-"))
    root.chmod(0o755)
    yield root / "pg"
    localstack.LocalCluster(root / "pg", 1).destroy()


def test_port_in_use_is_reported(cluster_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = localstack.LocalCluster(cluster_root, port)
        with pytest.raises(CdcError, match=f"port {port} is already in use") as info:
            cluster.start()
    assert info.value.kind is ErrorKind.SETUP


def test_wal_level_other_than_logical_is_refused(cluster_root: Path) -> None:
    cluster = localstack.LocalCluster(
        cluster_root, localstack.free_port(), overrides={"wal_level": "replica"}
    )
    cluster.start()
    with (
        psycopg.connect(cluster.paths.dsn, autocommit=True) as conn,
        pytest.raises(CdcError, match=r"wal_level is 'replica'.*ALTER SYSTEM"),
    ):
        preflight.check_source(conn)


def test_missing_binaries_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CDC_PG_BINDIR", "/nonexistent")
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    with pytest.raises(CdcError, match="apt-get install postgresql"):
        localstack.find_bindir()
