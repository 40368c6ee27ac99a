"""How commands print: rich tables on a terminal, never cut without one, and one JSON
document with `--json` (LSNs as text, sizes in bytes, times in ISO 8601 UTC)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cdc.stream import slots

# Without a terminal (a pipe, a log, a script), lines are as long as their content: a
# table is never cut to 80 columns.
PIPE_WIDTH = 100_000
console = Console() if Console().is_terminal else Console(width=PIPE_WIDTH, soft_wrap=True)


def print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def iso_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def slot_document(s: slots.SlotInfo) -> dict[str, Any]:
    return {
        "slot": s.name,
        "plugin": s.plugin,
        "database": s.database,
        "active": s.active,
        "active_pid": s.active_pid,
        "confirmed_flush_lsn": None
        if s.confirmed_flush_lsn is None
        else str(s.confirmed_flush_lsn),
        "restart_lsn": None if s.restart_lsn is None else str(s.restart_lsn),
        "wal_status": s.wal_status,
        "safe_wal_size_bytes": s.safe_wal_size,
        "retained_wal_bytes": s.retained_bytes,
    }


def lsn_text(value: object) -> str:
    return "-" if value is None else str(value)


def size_text(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def slot_table(found: list[slots.SlotInfo]) -> Table:
    table = Table(
        "slot",
        "database",
        "active",
        "confirmed_flush_lsn",
        "restart_lsn",
        "wal_status",
        "retained WAL",
    )
    for s in found:
        table.add_row(
            s.name,
            s.database or "-",
            f"yes (pid {s.active_pid})" if s.active else "no",
            lsn_text(s.confirmed_flush_lsn),
            lsn_text(s.restart_lsn),
            s.wal_status or "-",
            size_text(s.retained_bytes),
        )
    return table
