"""The `cdc` command line: parses arguments, wires up `cdc` objects and reports.

Logic lives in the `cdc` package; each command group is a typer sub-app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cdc import demo, faults, localstack, logs, preflight, slots, status
from cdc.backfill import Backfill, published_schemas
from cdc.backfill import Progress as BackfillProgress
from cdc.daemon import Daemon
from cdc.drift import all_clean
from cdc.drift import report as verify_report
from cdc.errors import CdcError, ErrorKind
from cdc.settings import STACK_DIR, Settings, load_settings, redact_url
from cdc.sinks.factory import default_sinks
from cdc.snapshot import exported_snapshot
from cdc.verify import run as run_verify

app = typer.Typer(
    help="Ordered, versioned change data capture: Postgres → historic schema + ClickHouse.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold DSNs with passwords
)
stack_app = typer.Typer(
    help="The local stack: a private PostgreSQL cluster under .stack/.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
slot_app = typer.Typer(help="The pipeline's logical replication slot.", no_args_is_help=True)
app.add_typer(slot_app, name="slot")
publication_app = typer.Typer(
    help="The publication of the source schema's tables.", no_args_is_help=True
)
app.add_typer(publication_app, name="publication")
console = Console()

DEFAULT_STACK_PORT = int(os.environ.get("CDC_STACK_PORT", "54329"))


def fail(error: CdcError) -> typer.Exit:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (env CDC_* overrides)")
]


@app.callback()
def main(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Settings come from --config, then CDC_* environment variables."""
    ctx.obj = config


def settings_of(ctx: typer.Context) -> Settings:
    try:
        return load_settings(ctx.find_root().obj)
    except CdcError as exc:
        raise fail(exc) from exc


@contextmanager
def source_session(ctx: typer.Context) -> Iterator[tuple[Settings, psycopg.Connection[Any]]]:
    """The settings and a source connection; a `CdcError` inside ends the command."""
    settings = settings_of(ctx)
    try:
        with source_connection(settings) as conn:
            yield settings, conn
    except CdcError as exc:
        raise fail(exc) from exc


def source_connection(settings: Settings) -> psycopg.Connection[Any]:
    dsn = settings.require_source_dsn()
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise CdcError(
            ErrorKind.SOURCE_CONNECTION,
            f"cannot connect to the source {redact_url(dsn)}: {redact_url(str(exc).strip())}",
        ) from exc


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


@slot_app.command("create")
def slot_create(ctx: typer.Context) -> None:
    """Create the pipeline's pgoutput slot (CDC_SLOT)."""
    with source_session(ctx) as (settings, conn):
        lsn = slots.create_slot(conn, settings.slot)
    typer.echo(f"created slot {settings.slot} at {lsn}")


@slot_app.command("drop")
def slot_drop(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option(help="terminate the consumer if active")] = False,
) -> None:
    """Drop the pipeline's slot (WAL it retained is released)."""
    with source_session(ctx) as (settings, conn):
        slots.drop_slot(conn, settings.slot, force=force)
    typer.echo(f"dropped slot {settings.slot}")


@slot_app.command("list")
def slot_list(ctx: typer.Context) -> None:
    """All logical slots of the source server."""
    with source_session(ctx) as (_settings, conn):
        found = slots.list_slots(conn)
    console.print(slot_table(found))


@slot_app.command("status")
def slot_status(ctx: typer.Context) -> None:
    """The pipeline's slot: positions, WAL status, retained WAL, consumer."""
    with source_session(ctx) as (settings, conn):
        slot = slots.get_slot(conn, settings.slot)
    if slot is None:
        typer.secho(
            f"error: slot {settings.slot!r} does not exist (create it with "
            "`cdc slot create` or start `cdc run`)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1)
    console.print(slot_table([slot]))


@slot_app.command("recreate")
def slot_recreate(ctx: typer.Context) -> None:
    """Recovery after the slot was lost: drop it if it remains (terminating its consumer)
    and create it again. Then run `cdc backfill`: changes made while there was no slot
    were never streamed, and the backfill copies them."""
    with source_session(ctx) as (settings, conn):
        if slots.get_slot(conn, settings.slot) is not None:
            slots.drop_slot(conn, settings.slot, force=True)
        lsn = slots.create_slot(conn, settings.slot)
    typer.echo(
        f"recreated slot {settings.slot} at {lsn}; now run `cdc backfill` to copy what "
        "the lost slot missed (safe while the daemon streams)"
    )


@app.command("status")
def status_command(ctx: typer.Context) -> None:
    """Slot, lag, the daemon's state and last error, and each table's state."""
    settings = settings_of(ctx)
    try:
        with source_connection(settings) as conn:
            slot = slots.get_slot(conn, settings.slot)
        with psycopg.connect(settings.require_historic_dsn(), autocommit=True) as conn:
            daemon_state, tables = status.read(conn, settings.historic_schema, settings.slot)
    except (CdcError, psycopg.Error) as exc:
        error = (
            exc
            if isinstance(exc, CdcError)
            else CdcError(ErrorKind.SINK_CONNECTION, redact_url(str(exc).strip()))
        )
        raise fail(error) from exc
    if slot is None:
        typer.secho(f"slot {settings.slot!r} does not exist", fg=typer.colors.YELLOW)
    else:
        console.print(slot_table([slot]))
        if warning := slots.wal_status_warning(slot):
            typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)
    if daemon_state is None:
        typer.echo("daemon: never started for this slot")
    else:
        typer.echo(
            f"daemon: {daemon_state.state} (since {daemon_state.updated_at:%Y-%m-%d %H:%M:%S %Z})"
        )
        if daemon_state.last_error:
            typer.secho(f"last error: {daemon_state.last_error}", fg=typer.colors.RED)
    table = Table("table", "state", "since", "error", title="tables")
    for t in tables:
        table.add_row(t.table, t.state, f"{t.updated_at:%Y-%m-%d %H:%M:%S}", t.error or "")
    console.print(table)


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
            ) + preflight.source_findings(source, settings.publication, settings.source_schema)
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


@publication_app.command("create")
def publication_create(ctx: typer.Context) -> None:
    """Create the publication (CDC_PUBLICATION) for every table of CDC_SOURCE_SCHEMA."""
    with source_session(ctx) as (settings, conn):
        tables = slots.create_publication(conn, settings.publication, settings.source_schema)
    typer.echo(
        f"created publication {settings.publication} with {len(tables)} tables: "
        + ", ".join(tables)
    )


@publication_app.command("add-table")
def publication_add_table(ctx: typer.Context, table: str) -> None:
    """Add a table of the source schema (then run `cdc backfill TABLE`)."""
    with source_session(ctx) as (settings, conn):
        slots.add_table(conn, settings.publication, settings.source_schema, table)
    typer.echo(
        f"added {settings.source_schema}.{table} to {settings.publication}; "
        f"copy its existing rows with `cdc backfill {table}`"
    )


@publication_app.command("drop-table")
def publication_drop_table(ctx: typer.Context, table: str) -> None:
    """Stop replicating a table (its target copies are kept)."""
    with source_session(ctx) as (settings, conn):
        slots.drop_table(conn, settings.publication, settings.source_schema, table)
    typer.echo(f"dropped {settings.source_schema}.{table} from {settings.publication}")


@publication_app.command("show")
def publication_show(ctx: typer.Context) -> None:
    """The tables in the publication."""
    with source_session(ctx) as (settings, conn):
        if not slots.publication_exists(conn, settings.publication):
            raise CdcError(
                ErrorKind.SETUP,
                f"publication {settings.publication!r} does "
                "not exist; create it with `cdc publication create`",
            )
        tables = slots.publication_tables(conn, settings.publication)
    table = Table("schema", "table", title=f"publication {settings.publication}")
    for schema, name in tables:
        table.add_row(schema, name)
    console.print(table)


@app.command("run")
def run(
    ctx: typer.Context,
    log_format: Annotated[
        str, typer.Option(help="auto (console on a terminal, else JSON), json or console")
    ] = "auto",
) -> None:
    """Run the daemon: stream the slot into the historic schema and ClickHouse."""
    settings = settings_of(ctx)
    logs.configure(json=None if log_format == "auto" else log_format == "json")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        faults.configure(os.environ.get("CDC_FAULTS"))
        Daemon(settings).run(stop)
    except CdcError as exc:
        logs.get_logger().error(
            "daemon_failed", kind=exc.kind.value, error=str(exc), hint=exc.policy.hint
        )
        raise typer.Exit(code=2) from exc


@app.command("backfill")
def backfill(
    ctx: typer.Context,
    tables: Annotated[
        list[str] | None, typer.Argument(help="tables (default: all published)")
    ] = None,
    where: Annotated[
        str | None, typer.Option(help="SQL predicate limiting the rows copied")
    ] = None,
    chunk_size: Annotated[int | None, typer.Option(min=1, help="rows per chunk")] = None,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help="parallel copiers")] = None,
) -> None:
    """Copy tables again at a fresh snapshot, while the daemon keeps streaming (safe: rows
    are versioned by the snapshot, so nothing newer is overwritten)."""
    settings = settings_of(ctx)
    log = logs.get_logger(command="backfill")
    try:
        source_dsn = settings.require_source_dsn()
        with source_connection(settings) as conn:
            schemas = published_schemas(conn, settings.publication, tables or [])
        sink_factory = default_sinks(settings)
        for sink in sink_factory():
            sink.prepare(schemas)
            sink.close()
        job = f"backfill-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        with progress_display(log) as on_progress, exported_snapshot(source_dsn) as snapshot:
            typer.echo(f"snapshot at {snapshot.lsn}; copying {len(schemas)} tables")
            done = Backfill(
                source_dsn,
                settings.require_historic_dsn(),
                settings.historic_schema,
                job,
                schemas,
                sink_factory,
                chunk_size=chunk_size or settings.backfill_chunk_size,
                workers=workers or settings.backfill_workers,
                batch_bytes=settings.backfill_batch_mb << 20,
                where=where,
                on_progress=on_progress,
            ).run(snapshot)
    except CdcError as exc:
        raise fail(exc) from exc
    typer.echo(
        f"copied {done.rows} rows in {done.done_chunks} chunks "
        f"({done.rows_per_s:,.0f} rows/s), job {job}"
    )


@app.command("verify")
def verify(
    ctx: typer.Context,
    tables: Annotated[
        list[str] | None, typer.Argument(help="tables (default: all published)")
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="copy differing ranges again, then re-check")
    ] = False,
    range_size: Annotated[int, typer.Option(min=1, help="source rows per range")] = 10_000,
    wait: Annotated[
        float, typer.Option(min=0, help="seconds to wait for the daemon to catch up")
    ] = 30.0,
) -> None:
    """Compare source, historic and ClickHouse per key range (counts and row hashes computed
    in each database). Exit 0: all agree; 1: drift; 2: error."""
    settings = settings_of(ctx)
    try:
        results, repaired = run_verify(
            settings, tables or [], range_size=range_size, wait_s=wait, repair=repair
        )
    except CdcError as exc:
        fail(exc)  # prints the error; verify exits 2 on errors, 1 is drift
        raise typer.Exit(code=2) from exc
    for heading, group in (("verify", results), ("after repair", repaired)):
        for result in group:
            table, notes = verify_report(result, heading)
            console.print(table)
            for note in notes:
                typer.echo(note)
    clean = all_clean(results, repaired)
    typer.echo(f"{len(results)} tables: " + ("all agree" if clean else "drift found"))
    raise typer.Exit(code=0 if clean else 1)


@contextmanager
def progress_display(log: Any) -> Iterator[Callable[[BackfillProgress], None]]:
    """A progress bar with rows/s and ETA on a terminal, else a log line every few seconds."""
    if sys.stderr.isatty():
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rows]:,} rows, {task.fields[rate]:,.0f} rows/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        task = bar.add_task("chunks", total=None, rows=0, rate=0.0)

        def show(p: BackfillProgress) -> None:
            bar.update(
                task, total=p.total_chunks, completed=p.done_chunks, rows=p.rows, rate=p.rows_per_s
            )

        with bar:
            yield show
        return
    last = [0.0]

    def report(p: BackfillProgress) -> None:
        if time.monotonic() - last[0] >= 5 or p.done_chunks == p.total_chunks:
            last[0] = time.monotonic()
            log.info(
                "backfill_progress",
                chunks_done=p.done_chunks,
                chunks=p.total_chunks,
                rows=p.rows,
                rows_per_s=round(p.rows_per_s),
            )

    yield report


@app.command("demo")
def demo_command(
    clients: Annotated[int, typer.Option(min=1, help="racing API clients")] = 8,
    scorecards: Annotated[int, typer.Option(min=1, help="scorecards they fight over")] = 40,
    rounds: Annotated[int, typer.Option(min=1, help="requests per client")] = 150,
) -> None:
    """Replay the incident on the local stack (API + daemon) and report the three stores."""
    state = localstack.read_state(STACK_DIR)
    if state is None:
        typer.secho("error: no local stack; run `make up` first", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    logs.configure(json=False, level="warning")
    typer.echo(f"replaying the incident: {clients} clients racing over {scorecards} scorecards")
    try:
        report = demo.run(state.dsn, state.clickhouse_url, clients, scorecards, rounds)
    except CdcError as exc:
        raise fail(exc) from exc
    print_demo_report(report)
    if report.differences:
        raise typer.Exit(code=1)


def print_demo_report(report: demo.Report) -> None:
    p50, p99 = demo.percentile(report.lags, 50), demo.percentile(report.lags, 99)
    ok = sum(n for status, n in report.statuses.items() if status < 300)
    console.print(
        f"\n[bold]{report.requests:,}[/] API requests ({ok:,} succeeded, the rest refused "
        f"as conflicts or not found), [bold]{report.changes:,}[/] row changes applied in "
        f"{report.seconds:.1f} s ({report.changes / max(report.seconds, 1e-9):,.0f} changes/s "
        "at the clients' pace; `make bench` measures the daemon's limits)"
    )
    console.print(
        f"commit -> visible in ClickHouse: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
        f"over {len(report.lags):,} transactions\n"
    )
    table = Table(
        "table",
        "store",
        "rows",
        "submitted",
        "rows differing from director",
        title="director vs historic vs ClickHouse",
    )
    for name, stores in report.stores.items():
        for store, counts in stores.items():
            differing = "-" if store == "director" else str(counts.differing)
            style = "red" if counts.differing else ""
            table.add_row(
                name,
                store,
                f"{counts.rows:,}",
                "-" if counts.submitted is None else f"{counts.submitted:,}",
                f"[{style}]{differing}[/]" if style else differing,
            )
    console.print(table)
    console.print(
        f"\nfor contrast, the old async fan-out on the same writes (jobs finishing in any "
        f"order): {report.naive_stale} scorecards wrong (stale, lost or resurrected), "
        f"{report.naive_wrong_status} submitted scorecards not shown as submitted"
    )
    console.print(
        f"cdc verify: {report.verified_ranges} key ranges compared by count and row hash in "
        "all three stores: " + ("all agree" if report.verify_clean else "[red]drift found[/]")
    )
    verdict = (
        "[bold green]all three stores agree[/]"
        if not report.differences
        else f"[bold red]{report.differences} rows differ[/]"
    )
    console.print(f"\nresult: {verdict}")
    console.print("the local stack keeps running: `make psql` to look around, `make down` to stop")


@stack_app.command("up")
def stack_up(
    port: Annotated[int, typer.Option(help="TCP port of the cluster")] = DEFAULT_STACK_PORT,
) -> None:
    """Start the local PostgreSQL cluster (wal_level=logical), creating it if needed."""
    try:
        state = localstack.stack_up(STACK_DIR, port)
    except CdcError as exc:
        raise fail(exc) from exc
    typer.echo(f"postgres: {state.dsn} (data in {state.cluster_root})")
    typer.echo(f"clickhouse: {state.clickhouse_url} (embedded engine)")


@stack_app.command("down")
def stack_down(
    purge: Annotated[bool, typer.Option(help="also delete all data")] = False,
) -> None:
    """Stop the local cluster (data is kept unless --purge)."""
    state = localstack.stack_down(STACK_DIR, purge=purge)
    typer.echo(
        "local stack stopped" + (" and purged" if purge else "") if state else "no local stack here"
    )


@stack_app.command(
    "psql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def stack_psql(ctx: typer.Context) -> None:
    """Open psql on the local cluster (extra arguments go to psql)."""
    state = localstack.read_state(STACK_DIR)
    if state is None:
        typer.secho("error: no local stack; run `make up` first", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    psql = localstack.find_bindir() / "psql"
    sys.exit(subprocess.call([str(psql), state.dsn, *ctx.args]))


@stack_app.command("status")
def stack_status() -> None:
    """Say whether the local cluster runs and where."""
    state = localstack.read_state(STACK_DIR)
    if state is None:
        typer.echo("no local stack here")
        raise typer.Exit(code=1)
    cluster = localstack.LocalCluster(Path(state.cluster_root), state.port)
    typer.echo(f"postgres: {'running' if cluster.running else 'stopped'} at {state.dsn}")


if __name__ == "__main__":
    app()
