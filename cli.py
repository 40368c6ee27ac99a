"""The `cdc` command line: parses arguments, wires up `cdc` objects and reports.

Logic lives in the `cdc` package; each command group is a typer sub-app.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from cdc import localstack
from cdc.errors import CdcError
from cdc.settings import STACK_DIR

app = typer.Typer(
    help="Ordered, versioned change data capture: Postgres → historic schema + ClickHouse.",
    no_args_is_help=True,
)
stack_app = typer.Typer(
    help="The local stack: a private PostgreSQL cluster under .stack/.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")

DEFAULT_STACK_PORT = int(os.environ.get("CDC_STACK_PORT", "54329"))


def fail(error: CdcError) -> typer.Exit:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


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
