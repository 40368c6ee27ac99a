"""`cdc publication`: the publication of the source schema's tables."""

from __future__ import annotations

import typer
from rich.table import Table

from cdc.cli.app import JsonOption, publication_app, source_session
from cdc.cli.output import console, print_json
from cdc.errors import CdcError, ErrorKind, backfill_command
from cdc.stream import membership, publications


@publication_app.command("create")
def publication_create(ctx: typer.Context) -> None:
    """Create the publication (CDC_PUBLICATION) for every table of CDC_SOURCE_SCHEMA that
    can be published without making Postgres refuse its UPDATE and DELETE."""
    with source_session(ctx) as (settings, conn):
        tables, logs, excluded = publications.create_publication(
            conn, settings.publication, settings.source_schema
        )
    typer.echo(
        f"created publication {settings.publication} with {len(tables)} tables: "
        + ", ".join(tables)
    )
    typer.echo(
        f"created publication {publications.append_publication(settings.publication)} (inserts and "
        f"truncates only) with {len(logs)} tables without a key, replicated as append-only "
        "logs: " + ", ".join(logs)
    )
    for why in excluded:
        typer.secho(
            f"not published: {settings.source_schema}.{why.table}: {why.reason}; fix: {why.fix}",
            fg=typer.colors.YELLOW,
        )


@publication_app.command("add-table")
def publication_add_table(ctx: typer.Context, table: str) -> None:
    """Add a table of the source schema (then run `cdc backfill TABLE`)."""
    with source_session(ctx) as (settings, conn):
        membership.add_table(conn, settings.publication, settings.source_schema, table)
    typer.echo(
        f"added {settings.source_schema}.{table} to {settings.publication}; "
        f"copy its existing rows with {backfill_command(table)}"
    )


@publication_app.command("drop-table")
def publication_drop_table(ctx: typer.Context, table: str) -> None:
    """Stop replicating a table (its target copies are kept)."""
    with source_session(ctx) as (settings, conn):
        membership.drop_table(conn, settings.publication, settings.source_schema, table)
    typer.echo(f"dropped {settings.source_schema}.{table} from {settings.publication}")


@publication_app.command("show")
def publication_show(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The tables in the publication."""
    with source_session(ctx) as (settings, conn):
        if not publications.publication_exists(conn, settings.publication):
            raise CdcError(
                ErrorKind.SETUP,
                f"publication {settings.publication!r} does "
                "not exist; create it with `cdc publication create`",
            )
        tables = publications.publication_tables(conn, settings.publication)
        append = publications.append_publication(settings.publication)
        logs = (
            publications.publication_tables(conn, append)
            if publications.publication_exists(conn, append)
            else []
        )
    if as_json:
        print_json(
            {
                "publication": settings.publication,
                "tables": [{"schema": schema, "table": name} for schema, name in tables],
                "append_publication": append,
                "append_only_tables": [{"schema": schema, "table": name} for schema, name in logs],
            }
        )
        return
    table = Table(
        "schema", "table", "replicated as", title=f"publications {settings.publication}, {append}"
    )
    for schema, name in tables:
        table.add_row(schema, name, "keyed")
    for schema, name in logs:
        table.add_row(schema, name, "append-only log (inserts, truncates)")
    console.print(table)
