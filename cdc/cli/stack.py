"""`cdc stack`: the local stack, a private PostgreSQL cluster under .stack/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from cdc.cli.app import DEFAULT_STACK_PORT, fail, stack_app
from cdc.dev import localstack
from cdc.errors import CdcError
from cdc.ops.settings import STACK_DIR


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
