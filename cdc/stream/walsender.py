"""What a replication connection asks the walsender, and what its refusals mean (pure):
the newest pgoutput protocol a server speaks, the START_REPLICATION command, and a
psycopg error as a `CdcError` whose kind is chosen from the SQLSTATE, never from message
text.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url
from cdc.protocol.lsn import Lsn

# SQLSTATEs (and classes) that mean the slot cannot be used any more.
SLOT_LOST_STATES = {"42704", "55000"}  # undefined_object, object_not_in_prerequisite_state
PERMISSION_STATE = "42501"  # insufficient_privilege


def protocol_version(server_version: int) -> int:
    """The newest pgoutput protocol the server speaks: 4 from PG16, 3 from 15, 2 from 14."""
    if server_version >= 160000:
        return 4
    if server_version >= 150000:
        return 3
    if server_version >= 140000:
        return 2
    return 1


def start_replication_command(
    slot: str,
    start: Lsn,
    publications: Sequence[str],
    proto: int,
    messages: bool,
    streaming: bool,
) -> sql.Composed:
    """`publications`: pgoutput streams the changes of every one of them."""
    names = ",".join(sql_quote_name(name) for name in publications)
    options: list[sql.Composable] = [
        sql.SQL("proto_version {}").format(sql.Literal(str(proto))),
        sql.SQL("publication_names {}").format(sql.Literal(names)),
    ]
    if messages:
        options.append(sql.SQL("messages 'true'"))
    if streaming and proto >= 2:
        options.append(sql.SQL("streaming 'on'"))
    return sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
        sql.Identifier(slot), sql.SQL(str(start)), sql.SQL(", ").join(options)
    )


def sql_quote_name(name: str) -> str:
    """A publication name as pgoutput's `publication_names` list syntax expects it."""
    return '"' + name.replace('"', '""') + '"'


def classify(exc: psycopg.Error, what: str) -> CdcError:
    """A `CdcError` for a psycopg error, by SQLSTATE (class), with `what` as context."""
    state = exc.sqlstate or ""
    detail = redact_url(str(exc).strip())
    if state in SLOT_LOST_STATES:
        return CdcError(ErrorKind.SLOT_LOST, f"{what}: {detail}")
    if state == PERMISSION_STATE:
        return CdcError(ErrorKind.PERMISSION, f"{what}: {detail}")
    return CdcError(ErrorKind.SOURCE_CONNECTION, f"{what}: {detail}")
