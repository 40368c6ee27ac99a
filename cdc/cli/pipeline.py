"""`cdc run`, `cdc backfill` and `cdc verify`: stream, copy again, compare."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from cdc.apply.daemon import Daemon
from cdc.check.drift import all_clean
from cdc.check.drift import document as verify_document
from cdc.check.drift import report as verify_report
from cdc.check.verify import LOG_NOT_COMPARED
from cdc.check.verify import run as run_verify
from cdc.cli.app import JsonOption, app, fail, settings_of, source_connection
from cdc.cli.output import console, print_json
from cdc.errors import CdcError, ErrorKind
from cdc.load.backfill import Backfill
from cdc.load.planning import published_schemas
from cdc.load.workers import Progress as BackfillProgress
from cdc.ops import faults, logs
from cdc.ops.settings import redact_url
from cdc.sinks.factory import default_sinks
from cdc.sinks.rebuild import drop_targets
from cdc.stream import slots
from cdc.stream.eligibility import source_tables
from cdc.stream.snapshot import exported_snapshot

# Why `cdc verify` leaves the append-only logs out.
NOT_COMPARED = f"append-only logs: {LOG_NOT_COMPARED}"


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
    except Exception as exc:
        logs.get_logger().exception(
            "daemon_failed", kind="unexpected", error=redact_url(str(exc).strip()),
            hint="a failure the daemon does not know: the traceback is in this line; the "
            "slot is not acknowledged past what both targets hold, so a restart loses nothing",
        )  # fmt: skip
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
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="remove from the targets every row older than the snapshot first (rows "
            "deleted at the source with no change streamed: after `cdc slot recreate`)",
        ),
    ] = False,
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
                replaces=replace,
            ).run(snapshot)
    except CdcError as exc:
        raise fail(exc) from exc
    typer.echo(
        f"copied {done.rows} rows in {done.done_chunks} chunks "
        f"({done.rows_per_s:,.0f} rows/s), job {job}"
    )


@app.command("rebuild")
def rebuild(
    ctx: typer.Context,
    tables: Annotated[list[str], typer.Argument(help="tables of the source schema")],
) -> None:
    """Drop tables' targets (historic and ClickHouse, with their `_current` views), for the
    daemon's next start to make them again and copy the tables whole: the fix for a table
    set aside because its targets cannot follow a change of it. Refused while a daemon
    streams (stop it first)."""
    settings = settings_of(ctx)
    try:
        with source_connection(settings) as conn:
            slot = slots.get_slot(conn, settings.slot)
            known = {t.name for t in source_tables(conn, settings.source_schema)}
        if slot is not None and slot.active:
            raise CdcError(
                ErrorKind.CONFIG,
                f"a daemon streams from slot {settings.slot!r} (pid {slot.active_pid}): stop "
                "it first; its next start copies the tables rebuilt",
            )
        missing = [t for t in tables if t not in known]
        if missing:
            raise CdcError(
                ErrorKind.CONFIG,
                f"no table {', '.join(missing)} in the source schema {settings.source_schema}",
            )
        for table in tables:
            dropped = drop_targets(settings, table)
            typer.echo(f"{table}: dropped {', '.join(dropped) or 'nothing (no targets)'}")
    except CdcError as exc:
        raise fail(exc) from exc
    typer.echo("start the daemon: it makes the targets again and copies the tables whole")


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
    as_json: JsonOption = False,
) -> None:
    """Compare source, historic and ClickHouse per key range (counts and row hashes computed
    in each database). Exit 0: all agree; 1: drift; 2: error (also when one table could not
    be compared: the others are)."""
    settings = settings_of(ctx)
    try:
        results, repaired, logs = run_verify(
            settings, tables or [], range_size=range_size, wait_s=wait, repair=repair
        )
    except CdcError as exc:
        fail(exc)  # prints the error; verify exits 2 on errors, 1 is drift
        raise typer.Exit(code=2) from exc
    clean = all_clean(results, repaired)
    code = 2 if any(r.failed for r in results) else 0 if clean else 1
    if as_json:
        print_json(
            {
                "clean": clean,
                "tables": [verify_document(r) for r in results],
                "after_repair": [verify_document(r) for r in repaired],
                "not_compared": [{"table": name, "reason": NOT_COMPARED} for name in logs],
            }
        )
        raise typer.Exit(code=code)
    for heading, group in (("verify", results), ("after repair", repaired)):
        for result in group:
            table, notes = verify_report(result, heading)
            console.print(table)
            for note in notes:
                typer.echo(note)
    if logs:
        typer.echo(f"not compared: {', '.join(logs)} ({NOT_COMPARED})")
    failures = sum(1 for r in results if r.failed is not None)
    drift = not all_clean([r for r in results if r.failed is None], repaired)
    summary = [f"{failures} could not be compared"] if failures else []
    summary += ["drift found"] if drift else []
    typer.echo(f"{len(results)} tables: {', '.join(summary) or 'all agree'}")
    raise typer.Exit(code=code)


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
