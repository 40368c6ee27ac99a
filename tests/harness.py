"""Shared test types: what the database fixtures chose, and how to reach it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

FIXTURE_ORIGINS: dict[str, str] = {}


@dataclass(frozen=True)
class PgServer:
    dsn: str
    origin: str
    # Restart the server (immediate shutdown, like a crash); None when it is not ours.
    restart: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        FIXTURE_ORIGINS["postgres"] = self.origin

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)


@dataclass(frozen=True)
class ClickHouseServer:
    url: str
    origin: str
    client: Any

    def __post_init__(self) -> None:
        FIXTURE_ORIGINS["clickhouse"] = self.origin


def drop_database(admin_dsn: str, dbname: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        slots = conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
            (dbname,),
        ).fetchall()
        for slot_name, pid in slots:
            if pid is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (slot_name,),
            )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
