"""Shared test types: what the database fixtures chose, and how to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.conninfo import make_conninfo

FIXTURE_ORIGINS: dict[str, str] = {}


@dataclass(frozen=True)
class PgServer:
    dsn: str
    origin: str

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
