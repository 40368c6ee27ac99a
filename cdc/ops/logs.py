"""Structured logging: events with key/value context, JSON in production, console on a TTY.

The libraries' own messages (the standard `logging` module: clickhouse-connect, psycopg)
are rendered the same way, with the library's logger name, from level WARNING: a log read
by a machine holds one JSON document per line, nothing else."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to `sys.stderr` as it is at each message (a CLI runner or a test swaps it for
    a stream that is closed later)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(json: bool | None = None, level: str = "info") -> None:
    """Set up structlog once. `json=None` picks JSON unless stderr is a terminal."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    exc_info = structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                stamp,
                exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # Its connection retries inside one request: the failure that matters is the request's,
    # which the caller reports (`setup_retry`, `apply_retry`, ...).
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def get_logger(**context: Any) -> Any:
    """A logger with `context`, following the configuration at each call: one made when a
    module is imported (before `configure`) logs as configured too, not in structlog's
    default console format on stdout."""
    return structlog.get_logger("cdc", **context)
