"""Test support for whole pipelines: run the daemon, wait for it, compare the three stores."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from psycopg import sql
from structlog.testing import capture_logs

from cdc.apply.daemon import Daemon
from cdc.apply.setup import Setup
from cdc.describe import describe_table
from cdc.errors import CdcError
from cdc.ops.settings import Settings
from cdc.schema import TableSchema
from cdc.sinks.base import Sink
from cdc.sinks.clickhouse.client import quote_identifier
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.ddl import current_view_name
from cdc.sinks.factory import SinkFactory
from cdc.sinks.historic.sink import HistoricSink

Rows = list[tuple[Any, ...]]


def make_settings(pg_dsn: str, ch_url: str, ch_database: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "source_dsn": pg_dsn,
        "clickhouse_url": ch_url,
        "clickhouse_database": ch_database,
        "slot": f"slot_{uuid.uuid4().hex[:8]}",
        "publication": "cdc_pub",
        "batch_latency_ms": 50,
        "status_interval_s": 0.5,
        "monitor_interval_s": 0,  # the drift monitor's tests turn it on
        **overrides,
    }
    return Settings(**values)


def setup_logs(settings: Settings, runs: int = 2) -> list[MutableMapping[str, Any]]:
    """What a daemon's setup logs when it runs `runs` times in one start (a retry after a
    failure runs it again)."""
    daemon = Daemon(settings)
    setup = Setup(settings, daemon.sinks, daemon.sink_factory, daemon.quarantine,
                  daemon.metrics, daemon.log, lambda: False)  # fmt: skip
    try:
        with capture_logs() as logs:
            for _ in range(runs):
                setup.run()
    finally:
        for sink in daemon.sinks:
            sink.close()
    return logs


class RunningDaemon:
    def __init__(self, daemon: Daemon, thread: threading.Thread, stop: threading.Event) -> None:
        self.daemon = daemon
        self.thread = thread
        self.stop = stop
        self.error: BaseException | None = None


def shared_client_sinks(settings: Settings, ch_client: Any) -> SinkFactory:
    """Sinks whose ClickHouse side uses the test's client (one embedded engine per process)."""

    def make() -> list[Sink]:
        return [
            HistoricSink(
                settings.require_historic_dsn(),
                settings.historic_schema,
                writers=settings.historic_writers,
            ),
            ClickHouseSink(
                settings.require_clickhouse_url(),
                settings.clickhouse_database,
                client=ch_client,
            ),
        ]

    return make


def prepared_sinks(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    ch_url: str,
    ch_client: Any,
    ch_database: str,
    table_name: str,
) -> tuple[TableSchema, SinkFactory]:
    """`director.<table_name>` described, and `shared_client_sinks` whose targets for it
    exist: what a backfill test hands to `Backfill`."""
    table = describe_table(pg, "director", table_name)
    sinks = shared_client_sinks(make_settings(pg_dsn, ch_url, ch_database), ch_client)
    for sink in sinks():
        sink.prepare([table])
        sink.close()
    return table, sinks


def cli_env(settings: Settings, **more: str) -> dict[str, str]:
    """The environment a `cdc` command reads `settings` from (and the `CDC_*` of `more`)."""
    return {
        "CDC_SOURCE_DSN": settings.require_source_dsn(),
        "CDC_CLICKHOUSE_URL": settings.require_clickhouse_url(),
        "CDC_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "CDC_SLOT": settings.slot,
        "CDC_PUBLICATION": settings.publication,
        **{f"CDC_{key.upper()}": value for key, value in more.items()},
    }


@contextmanager
def running_daemon(
    settings: Settings, ch_client: Any, stop: threading.Event | None = None
) -> Iterator[RunningDaemon]:
    """The daemon in a thread of this process, sharing the test's ClickHouse client;
    stopped by `stop` (a new event unless given) when the block ends."""
    daemon = Daemon(settings, sink_factory=shared_client_sinks(settings, ch_client))
    stop = threading.Event() if stop is None else stop
    running: RunningDaemon

    def target() -> None:
        try:
            daemon.run(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the context manager
            running.error = exc

    thread = threading.Thread(target=target, name="cdc-daemon", daemon=True)
    running = RunningDaemon(daemon, thread, stop)
    thread.start()
    try:
        wait_until(
            lambda: daemon.streaming.is_set() or not thread.is_alive(), what="daemon to stream"
        )
        yield running
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "daemon did not stop within 30 s"
    if running.error is not None:
        raise running.error


def normalize(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"  # NaN never equals itself
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, Decimal):
        return value.normalize() if value.is_finite() else value
    if isinstance(value, list):
        return tuple(normalize(v) for v in value)
    return value


def director_rows(
    conn: psycopg.Connection[Any], schema: str, table: str, columns: Sequence[str] = ()
) -> Rows:
    """The rows of `schema.table`: of `columns` (default: every column), sorted."""
    listed = sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("*")
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {}.{}").format(
            listed, sql.Identifier(schema), sql.Identifier(table)
        )
    ).fetchall()
    return sorted((tuple(normalize(v) for v in r) for r in rows), key=repr)


def source_columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    """The published columns of `schema.table` in their order (not those a target keeps
    after the source dropped or renamed them, nor generated ones)."""
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def historic_rows(
    conn: psycopg.Connection[Any], table: str, schema: str = "historic",
    columns: Sequence[str] = (),
) -> Rows:  # fmt: skip
    return director_rows(conn, schema, current_view_name(table), columns)


def clickhouse_rows(client: Any, database: str, table: str, columns: Sequence[str] = ()) -> Rows:
    listed = ", ".join(map(quote_identifier, columns)) if columns else "*"
    view = f"{quote_identifier(database)}.{quote_identifier(current_view_name(table))}"
    result = client.query(f"SELECT {listed} FROM {view}")
    return sorted((tuple(normalize(v) for v in r) for r in result.result_rows), key=repr)


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def wait_in_step(
    conn: psycopg.Connection[Any],
    ch_client: Any,
    ch_database: str,
    tables: list[str],
    source_schema: str = "director",
    timeout: float = 60.0,
    running: RunningDaemon | None = None,
) -> None:
    """Wait until historic and ClickHouse hold exactly the source's rows, every column the
    source has now, then assert it. With `running`, fail at once if that daemon died."""

    def in_step() -> bool:
        if running is not None and not running.thread.is_alive():
            raise AssertionError(f"the daemon died: {running.error!r}")
        for table in tables:
            columns = source_columns(conn, source_schema, table)
            source = director_rows(conn, source_schema, table, columns)
            try:
                if historic_rows(conn, table, columns=columns) != source:
                    return False
                if clickhouse_rows(ch_client, ch_database, table, columns) != source:
                    return False
            except (psycopg.Error, ClickHouseError):  # targets not created yet
                return False
        return True

    try:
        wait_until(in_step, timeout, "historic and ClickHouse to match the source")
    except AssertionError:
        for table in tables:
            columns = source_columns(conn, source_schema, table)
            source = director_rows(conn, source_schema, table, columns)
            assert historic_rows(conn, table, columns=columns) == source, (
                f"historic.{table} differs"
            )
            assert clickhouse_rows(ch_client, ch_database, table, columns) == source, (
                f"ClickHouse {table} differs"
            )
        raise


def stop_message(
    settings: Settings, ch_client: Any, provoke: Callable[[RunningDaemon], None]
) -> str:
    """Run the daemon, `provoke` a problem it must stop on, and return its error."""
    try:
        with running_daemon(settings, ch_client) as running:
            provoke(running)
            wait_until(lambda: not running.thread.is_alive(), 60, "the daemon to stop")
    except CdcError as exc:
        return str(exc)
    raise AssertionError("the daemon kept running")
