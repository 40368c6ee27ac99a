"""`cdc status` and `cdc check-grants`: the pipeline's state and the source's readiness."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import typer
from rich.table import Table

from cdc.cli.app import JsonOption, app, fail, settings_of, source_connection
from cdc.cli.output import console, iso_time, print_json, slot_document, slot_table
from cdc.errors import CdcError, ErrorKind
from cdc.ops import preflight, status
from cdc.ops.settings import Settings, redact_url
from cdc.stream import eligibility, publications, slots
from cdc.stream.eligibility import Exclusion, SourceTable


@dataclass
class StatusView:
    """What `cdc status` shows, read from the source and historic."""

    slot: slots.SlotInfo | None
    daemon: status.DaemonRecord | None
    tables: list[status.TableRecord]
    exclusions: dict[str, Exclusion]
    logs: set[str]  # tables replicated as append-only logs
    checks: dict[str, status.TableCheck]

    @property
    def freshness(self) -> float | None:
        """Seconds since the commit time of the newest source transaction both targets
        hold."""
        if self.daemon is None or self.daemon.held_through is None:
            return None
        return round(max(0.0, (datetime.now(UTC) - self.daemon.held_through).total_seconds()), 3)


@app.command("status")
def status_command(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Slot, lag, the daemon's state, last error and freshness, and each table's state and
    last drift check."""
    settings = settings_of(ctx)
    try:
        view = _read(settings)
    except (CdcError, psycopg.Error) as exc:
        error = (
            exc
            if isinstance(exc, CdcError)
            else CdcError(ErrorKind.SINK_CONNECTION, redact_url(str(exc).strip()))
        )
        raise fail(error) from exc
    if as_json:
        print_json(_document(view))
    else:
        _render(view, settings.slot)


def _read(settings: Settings) -> StatusView:
    with source_connection(settings) as conn:
        slot = slots.get_slot(conn, settings.slot)
        schema_tables, exclusions, published, logs = _source_tables(conn, settings)
    with psycopg.connect(settings.require_historic_dsn(), autocommit=True) as conn:
        daemon, recorded = status.read(conn, settings.historic_schema, settings.slot)
        checks = status.read_checks(conn, settings.historic_schema)
    tables = status.overview(schema_tables, exclusions, published, recorded)
    return StatusView(slot, daemon, tables, exclusions, logs, checks)


def _document(view: StatusView) -> dict[str, Any]:
    daemon = view.daemon
    return {
        "slot": None if view.slot is None else slot_document(view.slot),
        "slot_warning": None if view.slot is None else slots.wal_status_warning(view.slot),
        "daemon": None
        if daemon is None
        else {
            "state": daemon.state,
            "since": iso_time(daemon.updated_at),
            "last_error": daemon.last_error,
            "held_through": iso_time(daemon.held_through),
            "freshness_s": view.freshness,
        },
        "tables": [
            {
                "table": t.table,
                "state": t.state,
                "append_only": t.table in view.logs,
                "since": None if t.updated_at is None else iso_time(t.updated_at),
                "error": t.error,
                "monitor": _check_document(view.checks.get(t.table)),
            }
            for t in view.tables
        ],
        "excluded": [
            {"table": why.table, "reason": why.reason, "fix": why.fix}
            for why in view.exclusions.values()
        ],
    }


def _render(view: StatusView, slot_name: str) -> None:
    if view.slot is None:
        typer.secho(f"slot {slot_name!r} does not exist", fg=typer.colors.YELLOW)
    else:
        console.print(slot_table([view.slot]))
        if warning := slots.wal_status_warning(view.slot):
            typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)
    daemon, freshness = view.daemon, view.freshness
    if daemon is None:
        typer.echo("daemon: never started for this slot")
    else:
        typer.echo(f"daemon: {daemon.state} (since {daemon.updated_at:%Y-%m-%d %H:%M:%S %Z})")
        if daemon.last_error:
            typer.secho(f"last error: {daemon.last_error}", fg=typer.colors.RED)
        if daemon.held_through is None or freshness is None:
            typer.echo("freshness: unknown (nothing recorded yet)")
        else:
            typer.echo(
                f"freshness: {freshness:.1f} s (both targets hold the source's commits "
                f"through {daemon.held_through.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
            )
    table = Table("table", "state", "kind", "since", "error", "last check", "drift", title="tables")
    for t in view.tables:
        since = "" if t.updated_at is None else f"{t.updated_at:%Y-%m-%d %H:%M:%S}"
        kind = "append-only log" if t.table in view.logs else ""
        check = view.checks.get(t.table)
        checked = "" if check is None else f"{check.checked_at:%Y-%m-%d %H:%M:%S}"
        table.add_row(t.table, t.state, kind, since, t.error or "", checked, _drift_text(check))
    console.print(table)


def _check_document(check: status.TableCheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "checked_at": iso_time(check.checked_at),
        "drift": {"historic": check.historic_drift, "clickhouse": check.clickhouse_drift},
    }


def _drift_text(check: status.TableCheck | None) -> str:
    """Rows differing per target at the last check ("-": not compared)."""
    if check is None:
        return ""
    counts = {"historic": check.historic_drift, "clickhouse": check.clickhouse_drift}
    return ", ".join(f"{t} {'-' if n is None else n}" for t, n in counts.items())


def _source_tables(
    conn: psycopg.Connection[Any], settings: Settings
) -> tuple[list[SourceTable], dict[str, Exclusion], set[str], set[str]]:
    """The source schema's tables, the exclusions among them, the published ones (in
    either publication), and those replicated as append-only logs (tables without a key,
    unless the slot predates their publication: `publications.logs_replicated`)."""
    schema = settings.source_schema
    found = eligibility.source_tables(conn, schema)
    publishes_changes, published = True, set()
    if publications.publication_exists(conn, settings.publication):
        publishes_changes = publications.publication_options(
            conn, settings.publication
        ).publishes_changes
        published = {
            t for s, t in publications.replicated_tables(conn, settings.publication) if s == schema
        }
    _, excluded = eligibility.split(found, publishes_changes)
    logs: set[str] = set()
    if publications.logs_replicated(conn, settings.publication, settings.slot):
        logs = {t.name for t in found if eligibility.logged_only(t)}
    return found, {why.table: why for why in excluded if why.table not in logs}, published, logs


@app.command("check-grants")
def check_grants(ctx: typer.Context) -> None:
    """Check least privilege: the source role (REPLICATION + SELECT on the published tables)
    and the historic writer role; also the source settings that protect its disk."""
    settings = settings_of(ctx)
    try:
        with (
            source_connection(settings) as source,
            psycopg.connect(settings.require_historic_dsn(), autocommit=True) as historic,
        ):
            findings = preflight.grant_findings(
                source, historic, settings.publication, settings.historic_schema
            ) + preflight.source_findings(
                source, settings.publication, settings.source_schema, settings.slot
            )
    except psycopg.Error as exc:
        raise fail(CdcError(ErrorKind.SINK_CONNECTION, redact_url(str(exc).strip()))) from exc
    except CdcError as exc:
        raise fail(exc) from exc
    colors = {"ok": "green", "warning": "yellow", "error": "red"}
    table = Table("", "check", "finding", title="grants and settings")
    for finding in findings:
        table.add_row(
            f"[{colors[finding.level]}]{finding.level}[/]", finding.check, finding.message
        )
    console.print(table)
    if any(f.level == "error" for f in findings):
        raise typer.Exit(code=1)
