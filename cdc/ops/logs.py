"""Structured logging: events with key/value context, JSON in production, console on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(json: bool | None = None, level: str = "info") -> None:
    """Set up structlog once. `json=None` picks JSON unless stderr is a terminal."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A logger with `context`, following the configuration at each call: one made when a
    module is imported (before `configure`) logs as configured too, not in structlog's
    default console format on stdout."""
    return structlog.get_logger("cdc", **context)
