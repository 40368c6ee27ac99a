"""`cdc demo`: the incident replayed on the local stack (needs `cdc[demo]`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cdc.cli.app import app, fail
from cdc.cli.extras import require_extra
from cdc.cli.output import console
from cdc.dev import localstack
from cdc.errors import CdcError
from cdc.ops import logs
from cdc.ops.settings import STACK_DIR

if TYPE_CHECKING:
    from cdc.dev import demo


@app.command("demo")
def demo_command(
    clients: Annotated[int, typer.Option(min=1, help="racing API clients")] = 8,
    scorecards: Annotated[int, typer.Option(min=1, help="scorecards they fight over")] = 40,
    rounds: Annotated[int, typer.Option(min=1, help="requests per client")] = 150,
) -> None:
    """Replay the incident on the local stack (API + daemon) and report the three stores."""
    runner = require_extra("demo", "cdc.dev.demo", "uvicorn", "fastapi", "chdb")
    state = localstack.read_state(STACK_DIR)
    if state is None:
        typer.secho("error: no local stack; run `make up` first", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    logs.configure(json=False, level="warning")
    typer.echo(f"replaying the incident: {clients} clients racing over {scorecards} scorecards")
    try:
        report = runner.run(state.dsn, state.clickhouse_url, clients, scorecards, rounds)
    except CdcError as exc:
        raise fail(exc) from exc
    print_demo_report(report)
    if report.differences:
        raise typer.Exit(code=1)


def print_demo_report(report: demo.Report) -> None:
    from cdc.dev.demo import percentile

    p50, p99 = percentile(report.lags, 50), percentile(report.lags, 99)
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
