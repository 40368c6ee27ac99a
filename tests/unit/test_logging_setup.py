"""Loggers made when a module is imported log as `configure` says, later."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from typer.testing import CliRunner

from cdc.cli import app, pipeline
from cdc.ops import logs


def test_a_logger_made_before_configure_logs_json_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Module-level loggers (the sinks', the backfill's) were bound at import, before
    `configure`: they wrote structlog's console format on stdout, amid the JSON lines on
    stderr (and into the output of a command piped elsewhere)."""
    saved = structlog.get_config()
    structlog.reset_defaults()  # as in a new process, before `configure`
    try:
        early, bound = logs.get_logger(), logs.get_logger(slot="s")
        logs.configure(json=True)  # on the captured stderr
        early.info("early_event", table="t")
        bound.warning("bound_event")
    finally:
        structlog.configure(**saved)  # the captured stream closes with the test
    captured = capsys.readouterr()
    assert captured.out == ""
    events = [json.loads(line) for line in captured.err.splitlines()]
    assert [(e["event"], e.get("slot")) for e in events] == [
        ("early_event", None),
        ("bound_event", "s"),
    ]


def test_a_library_warning_is_one_json_line_with_its_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """clickhouse-connect logs through the standard `logging` module: its "Unexpected Http
    Driver Exception" came out as a bare line amid the daemon's JSON lines."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure(json=True)
        logging.getLogger("clickhouse_connect.driver").warning("driver trouble %s", "here")
        logging.getLogger("clickhouse_connect.driver").info("below the level shown")
        logging.getLogger("urllib3.connectionpool").warning("a retry inside one request")
    finally:
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, level
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["logger"], e["level"]) for e in events] == [
        ("driver trouble here", "clickhouse_connect.driver", "warning")
    ]
    assert events[0]["timestamp"].endswith("Z")


def test_a_failure_no_policy_names_ends_the_daemon_in_one_json_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception the error policy does not classify ended `cdc run` with a screen-wide
    rich traceback on stderr, amid the JSON lines a log collector reads."""

    class Failing:
        def __init__(self, settings: object) -> None:
            pass

        def run(self, stop: object) -> None:
            raise RuntimeError("boom at postgresql://cdc:secret@db/x")

    monkeypatch.setattr(pipeline, "Daemon", Failing)
    result = CliRunner().invoke(
        app, ["run", "--log-format", "json"],
        env={"CDC_SOURCE_DSN": "postgresql://x@h/d", "CDC_CLICKHOUSE_URL": "chdb:///tmp/x"},
    )  # fmt: skip
    assert result.exit_code == 2
    lines = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    failed = next(e for e in lines if e["event"] == "daemon_failed")
    assert failed["kind"] == "unexpected"
    assert "secret" not in failed["error"] and "boom" in failed["error"]
    assert "Traceback" in failed["exception"] and "RuntimeError" in failed["exception"]
