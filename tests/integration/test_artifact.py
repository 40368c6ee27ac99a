"""The shipped artifact: the wheel, installed without extras into a fresh venv (as
`deploy/Dockerfile` does), starts; what needs an extra says which; with the embedded
engine's extra added, a short `cdc run` streams a change into both targets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pipeline import wait_until

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "README.md", "cdc", "api"]
READ_ROWS = """
import sys
from cdc.sinks.clickhouse import client as clickhouse
client = clickhouse.connect(sys.argv[1])
print(client.query("SELECT id, v FROM analytics.t_current ORDER BY id").result_rows)
client.close()
"""


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> Any:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without CDC_* variables and Python paths into the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CDC_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources the Dockerfile copies."""
    build = tmp_path_factory.mktemp("build")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, build / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so"))  # fmt: skip
        else:
            shutil.copy(source, build / name)
    dist = build / "dist"
    out = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), "."], build,
              clean_env())  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (found,) = dist.glob("cdc-*.whl")
    return found


@pytest.mark.slow
def test_plain_install_starts_and_streams(
    wheel: Path, pg: psycopg.Connection[Any], pg_dsn: str, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, cdc = env_dir / "bin" / "python", env_dir / "bin" / "cdc"
    env = clean_env()
    out = run([str(python), "-m", "pip", "install", "-q", str(wheel)], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]

    for argv in (["--help"], ["status", "--help"], ["run", "--help"]):
        out = run([str(cdc), *argv], tmp_path, env, 60)
        assert out.returncode == 0, f"cdc {' '.join(argv)}: {out.stderr[-3000:]}"
    out = run([str(cdc), "--version"], tmp_path, env, 60)
    assert out.returncode == 0 and out.stdout.strip() == "cdc 0.1.0", out
    out = run([str(python), "-c", "import cli"], tmp_path, env, 60)
    assert out.returncode != 0, "a top-level module `cli` was installed"
    for module in ("fastapi", "chdb", "httpx"):
        out = run([str(python), "-c", f"import {module}"], tmp_path, env, 60)
        assert out.returncode != 0, f"{module} came with a plain install"

    # Outside the local stack: no ClickHouse URL is an error, not an embedded default.
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    source = {"CDC_SOURCE_DSN": pg_dsn, "CDC_CONNECT_TIMEOUT_S": "5"}
    out = run([str(cdc), "run"], tmp_path, {**env, **source}, 60)
    assert out.returncode == 2 and "CDC_CLICKHOUSE_URL" in out.stderr, out.stderr[-3000:]
    embedded = f"chdb://{tmp_path / 'clickhouse'}"
    with_url = {**env, **source, "CDC_CLICKHOUSE_URL": embedded}
    out = run([str(cdc), "run"], tmp_path, with_url, 60)
    assert out.returncode == 2 and "pip install 'cdc[embedded]'" in out.stderr, out.stderr
    out = run([str(cdc), "demo"], tmp_path, env, 60)
    assert out.returncode == 1 and "pip install 'cdc[demo]'" in out.stderr, out.stderr

    # With the embedded engine's extra, the daemon streams a change into both targets.
    out = run([str(python), "-m", "pip", "install", "-q", f"{wheel}[embedded]"], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        daemon = subprocess.Popen(
            [str(cdc), "run", "--log-format", "json"], cwd=tmp_path,
            env={**with_url, "CDC_BATCH_LATENCY_MS": "20"}, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: b"daemon_started" in log.read_bytes() or daemon.poll() is not None,
                   120, "the daemon to start")  # fmt: skip
        pg.execute("INSERT INTO director.t VALUES (1, 'streamed')")

        def arrived() -> bool:
            assert daemon.poll() is None, log.read_text()[-3000:]
            try:
                row = pg.execute("SELECT v FROM historic.t_current WHERE id = 1").fetchone()
            except psycopg.errors.UndefinedTable:
                return False
            return row == ("streamed",)

        wait_until(arrived, 120, "the row in historic")
        time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    out = run([str(python), "-c", READ_ROWS, embedded], tmp_path, env, 120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[(1, 'streamed')]"
