"""Exceptions of the databases classified into error kinds (`cdc.classify`)."""

from __future__ import annotations

import psycopg
import pytest
from clickhouse_connect.driver import exceptions as ch_exceptions

from cdc.classify import clickhouse_error, postgres_error
from cdc.errors import ErrorKind, backfill_command

pytestmark = pytest.mark.unit


def test_postgres_and_clickhouse_errors_are_classified_by_code() -> None:
    """Transient failures are retried, refusals that would repeat stop: decided by SQLSTATE
    and ClickHouse error code, never by message text."""
    sink = ErrorKind.SINK_CONNECTION

    def pg_kind(state: str | None) -> ErrorKind:
        exc = psycopg.errors.lookup(state)("boom") if state else psycopg.OperationalError("x")
        return postgres_error(exc, sink, "writing").kind

    assert pg_kind(None) is sink  # the connection was lost
    assert pg_kind("57P01") is sink  # admin shutdown
    assert pg_kind("40P01") is sink  # deadlock
    assert pg_kind("42501") is ErrorKind.PERMISSION
    assert pg_kind("42703") is ErrorKind.SCHEMA  # undefined column
    assert pg_kind("22003") is ErrorKind.REJECTED  # numeric value out of range

    def ch_kind(exc: Exception) -> ErrorKind | None:
        error = clickhouse_error(exc, "http://u:secret@h:8123", "writing")
        assert error is None or "secret" not in str(error)
        return None if error is None else error.kind

    assert ch_kind(ConnectionRefusedError()) is sink
    assert ch_kind(ch_exceptions.OperationalError("timed out")) is sink
    assert ch_kind(ch_exceptions.DatabaseError("busy", code=202)) is sink
    assert ch_kind(ch_exceptions.DatabaseError("no column", code=16)) is ErrorKind.SCHEMA
    assert ch_kind(ch_exceptions.DatabaseError("denied", code=497)) is ErrorKind.PERMISSION
    assert ch_kind(ch_exceptions.DatabaseError("?", code=1)) is ErrorKind.REJECTED
    assert ch_kind(TypeError("a bug")) is None  # not classified: it leaves as it is


def test_a_hint_names_the_backfill_as_a_shell_reads_it() -> None:
    assert backfill_command("orders") == "`cdc backfill orders`"
    assert backfill_command("Team Notes") == "`cdc backfill 'Team Notes'`"
    assert backfill_command("it's") == "`cdc backfill 'it'\"'\"'s'`"
