"""`cdc slot`: create, drop, list, inspect and recreate the pipeline's slot."""

from __future__ import annotations

from typing import Annotated

import typer

from cdc.cli.app import JsonOption, slot_app, source_session
from cdc.cli.output import console, print_json, slot_document, slot_table
from cdc.stream import slots


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
def slot_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """All logical slots of the source server."""
    with source_session(ctx) as (_settings, conn):
        found = slots.list_slots(conn)
    if as_json:
        print_json({"slots": [slot_document(s) for s in found]})
        return
    console.print(slot_table(found))


@slot_app.command("status")
def slot_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
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
    if as_json:
        print_json(slot_document(slot))
        return
    console.print(slot_table([slot]))


@slot_app.command("recreate")
def slot_recreate(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option(help="also while a consumer streams from it (it is disconnected)")
    ] = False,
) -> None:
    """Recovery after the slot was lost: drop it if it remains and create it again. Then
    run `cdc backfill --replace`: changes made while there was no slot were never
    streamed, and the backfill copies them (and removes rows deleted meanwhile). A slot a
    daemon streams from is refused without --force."""
    with source_session(ctx) as (settings, conn):
        if slots.get_slot(conn, settings.slot) is not None:
            slots.drop_slot(conn, settings.slot, force=force)
        lsn = slots.create_slot(conn, settings.slot)
    typer.echo(
        f"recreated slot {settings.slot} at {lsn}; now start the daemon and run `cdc backfill "
        "--replace` to copy what the lost slot missed, deletes included (safe while the "
        "daemon streams)"
    )
