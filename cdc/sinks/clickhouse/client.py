"""Open a ClickHouse client from a URL: `chdb://path` (the embedded engine) or `http(s)://`.

The embedded engine is the real ClickHouse running in-process through clickhouse-connect's
chdb backend. Only one chdb data path can be open per process: callers keep one client
and close it before opening another path. And one process at a time may open a data path
(the engine locks it): a second one is refused with the process that holds it.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import clickhouse_connect

from cdc.classify import clickhouse_error
from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url

EMBEDDED_SCHEME = "chdb"
DEFAULT_PORTS = {"http": 8123, "https": 8443}


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backticks, with backslashes and backticks escaped."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def embedded_path(url: str) -> Path | None:
    """The data directory of a `chdb://` URL (relative paths are resolved), else None."""
    parts = urlsplit(url)
    if parts.scheme != EMBEDDED_SCHEME:
        return None
    raw = url[len(EMBEDDED_SCHEME) + 3 :]
    return Path(raw).resolve()


def _embedded_client(path: Path) -> Any:
    """A client of the embedded engine. Its session module imports pyarrow (and numpy)
    when there is one, only for the Arrow outputs, which the client does not use (it
    reads Native): 0.09 s of the daemon's start-up. Where that import is not optional
    (another chdb), the client is made with it."""
    try:
        with _without("pyarrow"):
            return clickhouse_connect.get_client(dsn=f"chdb://{path}")
    except ImportError:
        return clickhouse_connect.get_client(dsn=f"chdb://{path}")


@contextmanager
def _without(module: str) -> Iterator[None]:
    """`import module` fails meanwhile, unless it is imported already."""
    if module in sys.modules:
        yield
        return
    sys.modules[module] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if module in sys.modules and sys.modules[module] is None:
            del sys.modules[module]


def connect(url: str, database: str | None = None) -> Any:
    """A clickhouse-connect client for `url`, optionally bound to `database`."""
    path = embedded_path(url)
    if path is not None and importlib.util.find_spec("chdb") is None:
        raise CdcError(
            ErrorKind.CONFIG,
            f"ClickHouse URL {url} names the embedded engine, which is not installed: "
            "pip install 'cdc[embedded]', or set CDC_CLICKHOUSE_URL to an http(s):// server",
        )
    try:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            if (holder := held_by(path)) is not None:  # before the engine prints its own
                raise _held_error(path, holder)
            client = _embedded_client(path)
            if database is not None:
                client.database = database
            return client
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise CdcError(
                ErrorKind.CONFIG,
                f"ClickHouse URL {redact_url(url)} must start with chdb://, http:// or https://",
            )
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        return clickhouse_connect.get_client(
            host=parts.hostname or "localhost",
            port=parts.port or DEFAULT_PORTS[parts.scheme],
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            secure=parts.scheme == "https",
            database=database or "default",
            **options,
        )
    except CdcError:
        raise
    except Exception as exc:
        if path is not None and (holder := held_by(path)) is not None:
            raise _held_error(path, holder) from exc
        error = clickhouse_error(exc, url, "cannot connect to ClickHouse")
        if error is None:
            raise
        raise error from exc


def _held_error(path: Path, holder: str) -> CdcError:
    return CdcError(
        ErrorKind.SINK_CONNECTION,
        f"the embedded ClickHouse at {path} is open in another process ({holder}): one "
        "process at a time can open it, and a running daemon holds it. Stop that "
        "process first (with the embedded engine, `cdc verify` and `cdc backfill` run "
        "while the daemon is stopped; while it runs, its drift monitor checks the "
        "tables, shown by `cdc status`), or use a ClickHouse server (http(s)://)",
    )


def held_by(path: Path) -> str | None:
    """The process holding the embedded engine's lock on `path` (its `status` file, which
    names it), if another process holds it; else None."""
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = os.read(fd, 4096).decode(errors="replace")
            pid = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                        if line.startswith("PID:")), None)  # fmt: skip
            if pid == str(os.getpid()):
                return None
            return "unknown pid" if pid is None else f"pid {pid}"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
