"""The root `cdc` command: its sub-apps and global options, and what every command shares
(settings, the source connection, how an error ends a command)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from cdc.errors import CdcError, ErrorKind
from cdc.ops import preflight
from cdc.ops.settings import Settings, load_settings, redact_url

app = typer.Typer(
    help="Ordered, versioned change data capture: Postgres → historic schema + ClickHouse.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold DSNs with passwords
    # Help texts are docstrings: a line break inside a paragraph is a space.
    rich_markup_mode="markdown",
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

DEFAULT_STACK_PORT = int(os.environ.get("CDC_STACK_PORT", "54329"))
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (see docs/configuration.md).")
]


def fail(error: CdcError) -> typer.Exit:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (env CDC_* overrides)")
]


def version() -> str:
    try:
        return metadata.version("cdc")
    except metadata.PackageNotFoundError:  # a checkout that is not installed
        return "unknown"


def _print_version(show: bool) -> None:
    if show:
        typer.echo(f"cdc {version()}")
        raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version."),
]


@app.callback()
def main(
    ctx: typer.Context, config: ConfigOption = None, show_version: VersionOption = False
) -> None:
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
    """A connection to the source, which must be a primary."""
    dsn = settings.require_source_dsn()
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise CdcError(
            ErrorKind.SOURCE_CONNECTION,
            f"cannot connect to the source {redact_url(dsn)}: {redact_url(str(exc).strip())}",
        ) from exc
    try:
        preflight.check_primary(conn)
    except BaseException:
        conn.close()
        raise
    return conn
