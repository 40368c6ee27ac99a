"""The project's one error type: every failure has a kind, and the kind decides the policy.

`ErrorKind` names what went wrong; `POLICIES` says what the daemon does about it (retry
with backoff, stop and tell the operator, or quarantine one table while others flow) and
gives the operator a hint. Code raises `CdcError(kind, message)` with `from exc` to keep
the cause; nothing matches on message text.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    CONFIG = "config"
    SOURCE_CONNECTION = "source_connection"
    SINK_CONNECTION = "sink_connection"
    DECODE = "decode"
    PROTOCOL = "protocol"
    SCHEMA = "schema"
    TABLE_CHANGED = "table_changed"  # a change of one table its targets cannot follow
    NO_KEY = "no_key"
    UNSUPPORTED_TYPE = "unsupported_type"
    UNSUPPORTED_TABLE = "unsupported_table"  # its shape, not a type: the message says what
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    SLOT_LOST = "slot_lost"
    PERMISSION = "permission"
    SETUP = "setup"
    REJECTED = "rejected"  # a target refused a write or read, and will refuse it again


# How to recover the changes no slot streamed (the slot was lost, or the publication
# dropped): the copies must replace, or rows deleted meanwhile stay in the targets.
REPLAY_LOST = (
    "run `cdc slot recreate`, start the daemon, then `cdc backfill --replace`: it copies "
    "every table at a fresh snapshot and removes from the targets what the source no longer "
    "holds (rows deleted while no change was streamed)"
)


class Action(enum.Enum):
    RETRY = "retry"
    STOP = "stop"
    QUARANTINE_TABLE = "quarantine_table"


@dataclass(frozen=True, slots=True)
class Policy:
    action: Action
    hint: str


POLICIES: dict[ErrorKind, Policy] = {
    ErrorKind.CONFIG: Policy(Action.STOP, "fix the setting named in the message and restart"),
    ErrorKind.SOURCE_CONNECTION: Policy(
        Action.RETRY, "check that the source Postgres is up and reachable"
    ),
    ErrorKind.SINK_CONNECTION: Policy(
        Action.RETRY, "check that the historic Postgres and ClickHouse are up and reachable"
    ),
    ErrorKind.DECODE: Policy(
        Action.STOP, "the replication stream could not be decoded; report it with the LSN"
    ),
    ErrorKind.PROTOCOL: Policy(Action.RETRY, "the replication connection misbehaved; reconnecting"),
    ErrorKind.SCHEMA: Policy(
        Action.STOP, "an incompatible schema change; follow the message, then restart"
    ),
    ErrorKind.TABLE_CHANGED: Policy(
        Action.QUARANTINE_TABLE,
        "the table changed in a way its targets cannot follow: stop the daemon, `cdc rebuild` "
        "the table, start it; the other tables go on",
    ),
    ErrorKind.NO_KEY: Policy(
        Action.QUARANTINE_TABLE,
        "the table has no key the targets can keep its rows by (it never had one, or lost "
        "it): add the primary key the message names, stop the daemon, `cdc rebuild` the "
        "table, start it; the other tables go on",
    ),
    ErrorKind.UNSUPPORTED_TYPE: Policy(
        Action.QUARANTINE_TABLE,
        "change the column type or exclude the table from the publication; then stop the "
        "daemon, `cdc rebuild` the table, start it",
    ),
    ErrorKind.UNSUPPORTED_TABLE: Policy(
        Action.QUARANTINE_TABLE,
        "the targets cannot hold the table as it is: change at the source what the message "
        "names, then stop the daemon, `cdc rebuild` the table, start it; the other tables go "
        "on",
    ),
    ErrorKind.VALUE_OUT_OF_RANGE: Policy(
        Action.QUARANTINE_TABLE,
        "the value cannot be stored in ClickHouse: fix it at the source, then stop the "
        "daemon, `cdc rebuild` the table (it drops its targets), start it: the table is "
        "copied whole at the start",
    ),
    ErrorKind.SLOT_LOST: Policy(Action.STOP, f"the slot is gone or invalidated: {REPLAY_LOST}"),
    ErrorKind.PERMISSION: Policy(Action.STOP, "grant the privileges named; see `cdc check-grants`"),
    ErrorKind.SETUP: Policy(Action.STOP, "fix the environment as the message says"),
    ErrorKind.REJECTED: Policy(
        Action.STOP,
        "a target refused the write for the reason in the message; fix it and restart (the "
        "slot is not acknowledged past it: nothing is lost)",
    ),
}


class CdcError(Exception):
    """Base error of the project. `kind` selects the policy in `POLICIES`; `table`
    (schema, name) says which table a quarantine applies to, when there is one."""

    kind: ErrorKind
    table: tuple[str, str] | None

    def __init__(self, kind: ErrorKind, message: str, table: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.table = table

    @property
    def policy(self) -> Policy:
        return POLICIES[self.kind]


class DecodeError(CdcError):
    """Bytes from the replication stream that are truncated, unknown or malformed."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.DECODE, message)


def rebuild_steps() -> str:
    """What to do about a table set aside because its targets cannot follow its change."""
    return (
        "Stop the daemon, run `cdc rebuild <table>` (it drops both target tables, historic "
        "and ClickHouse, with their _current views), then start it: it copies the table "
        "whole into new ones"
    )


def backfill_command(table: str) -> str:
    """`cdc backfill <table>` as a shell reads it (a name with spaces or quotes quoted)."""
    return f"`cdc backfill {shlex.quote(table)}`"
