"""Replication slots: create, drop, inspect (SQL built by pure functions), and wait for
one to confirm a position (`SlotWatch`, for `cdc verify`).

A pipeline is one `pgoutput` slot streaming the publications of `cdc.stream.publications`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc.errors import CdcError, ErrorKind
from cdc.protocol.lsn import Lsn

DROP_WAIT_S = 10.0  # disconnecting a slot's consumer, before giving up
PLUGIN = "pgoutput"


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: Lsn | None
    confirmed_flush_lsn: Lsn | None
    wal_status: str | None
    safe_wal_size: int | None
    retained_bytes: int | None


SLOT_QUERY = """
SELECT slot_name, plugin, database, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text, wal_status, safe_wal_size,
       CASE WHEN restart_lsn IS NULL THEN NULL
            ELSE pg_wal_lsn_diff(
                CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                     ELSE pg_current_wal_lsn() END, restart_lsn)::bigint END
FROM pg_replication_slots
WHERE slot_type = 'logical' AND (%(name)s::text IS NULL OR slot_name = %(name)s)
ORDER BY slot_name
"""


def _lsn(text: str | None) -> Lsn | None:
    return Lsn.parse(text) if text else None


def list_slots(conn: psycopg.Connection[Any], name: str | None = None) -> list[SlotInfo]:
    rows = conn.execute(SLOT_QUERY, {"name": name}).fetchall()
    return [
        SlotInfo(r[0], r[1], r[2], r[3], r[4], _lsn(r[5]), _lsn(r[6]), r[7], r[8], r[9])
        for r in rows
    ]


def get_slot(conn: psycopg.Connection[Any], name: str) -> SlotInfo | None:
    found = list_slots(conn, name)
    return found[0] if found else None


SAFE_WAL_WARNING_BYTES = 1 << 30


def wal_status_warning(slot: SlotInfo) -> str | None:
    """What to tell the operator when Postgres may soon invalidate the slot, else None."""
    if slot.wal_status == "unreserved":
        return (
            "the slot's WAL is past max_slot_wal_keep_size and will be removed at the next "
            "checkpoint: the daemon must catch up now, or raise max_slot_wal_keep_size"
        )
    if slot.safe_wal_size is not None and slot.safe_wal_size < SAFE_WAL_WARNING_BYTES:
        return (
            f"only {slot.safe_wal_size >> 20} MB of WAL can still be written before the slot "
            "is invalidated (max_slot_wal_keep_size); check why the daemon lags"
        )
    if slot.wal_status == "extended":
        return "the slot retains more than max_wal_size of WAL; the daemon is behind"
    return None


def create_slot(conn: psycopg.Connection[Any], name: str) -> Lsn:
    """Create a logical `pgoutput` slot; returns its starting LSN."""
    if get_slot(conn, name) is not None:
        raise CdcError(ErrorKind.SETUP, f"replication slot {name!r} already exists")
    row = conn.execute(create_slot_query(conn.info.server_version), (name, PLUGIN)).fetchone()
    assert row is not None
    return Lsn.parse(row[0])


FAILOVER_VERSION = 170000  # from Postgres 17 a slot can follow a failover to a standby


def create_slot_query(server_version: int) -> str:
    """SQL creating a logical slot (parameters: name, plugin): from Postgres 17 a failover
    slot, synchronised to standbys."""
    if server_version >= FAILOVER_VERSION:
        return (
            "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s, "
            "temporary => false, twophase => false, failover => true)"
        )
    return "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)"


def drop_slot(conn: psycopg.Connection[Any], name: str, force: bool = False) -> None:
    """Drop slot `name`; one a consumer streams from only with `force`, which disconnects
    the consumer and drops the slot once it is released (a consumer that takes it again
    meanwhile is disconnected again, for up to `DROP_WAIT_S`)."""
    slot = get_slot(conn, name)
    if slot is None:
        raise CdcError(ErrorKind.SETUP, f"replication slot {name!r} does not exist")
    deadline = time.monotonic() + DROP_WAIT_S
    while slot is not None:
        if slot.active and not force:
            raise CdcError(
                ErrorKind.SETUP,
                f"replication slot {name!r} is in use by process {slot.active_pid}; stop the "
                "daemon first, or pass --force to terminate that connection",
            )
        if slot.active:
            conn.execute("SELECT pg_terminate_backend(%s)", (slot.active_pid,))
        elif conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (name,),
        ).fetchall():
            return
        if time.monotonic() > deadline:
            raise CdcError(
                ErrorKind.SETUP,
                f"replication slot {name!r} is still in use (process {slot.active_pid}) "
                f"after {DROP_WAIT_S:g} s of disconnecting its consumer: stop the daemon first",
            )
        time.sleep(0.05)
        slot = get_slot(conn, name)


WATCH_POLL_S = 0.1


class SlotWatch:
    """Waits, bounded, until the pipeline's slot has confirmed a WAL position."""

    def __init__(self, conn: psycopg.Connection[Any], slot: str, timeout_s: float) -> None:
        self.conn = conn
        self.slot = slot
        self.timeout_s = timeout_s
        self.confirmed = Lsn.ZERO
        self.problem: str | None = None  # set once a wait failed; later waits only look

    def wait_past(self, lsn: Lsn) -> bool:
        deadline = time.monotonic() + (0.0 if self.problem else self.timeout_s)
        while self.confirmed < lsn:
            info = get_slot(self.conn, self.slot)
            if info is None:
                self.problem = (
                    f"slot {self.slot!r} does not exist, so verify cannot tell drift from "
                    "changes the daemon has not applied yet"
                )
                return False
            self.confirmed = max(self.confirmed, info.confirmed_flush_lsn or Lsn.ZERO)
            if self.confirmed >= lsn:
                break
            if time.monotonic() >= deadline:
                self.problem = (
                    f"slot {self.slot!r} did not pass {lsn} within {self.timeout_s:g} s (it "
                    f"is at {self.confirmed}): is the daemon running and keeping up?"
                )
                return False
            time.sleep(WATCH_POLL_S)
        return True
