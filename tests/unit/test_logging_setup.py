"""Loggers made when a module is imported log as `configure` says, later."""

from __future__ import annotations

import json

import pytest
import structlog

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
