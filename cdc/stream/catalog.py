"""The source's catalog as the daemon needs it: the schema of each Relation (cached per
Relation object, so a relation that changed is described again), queried on one
connection that reconnects with backoff while the source is unreachable (a restart of
the source is not a reason to stop)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from cdc.describe import describe_relation
from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url
from cdc.protocol import Relation
from cdc.retry import Backoff, retrying
from cdc.schema import TableSchema

ATTEMPTS = 30
T = TypeVar("T")


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, CdcError) and exc.kind is ErrorKind.SOURCE_CONNECTION


class Catalog:
    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        max_retry_delay_s: float,
        stopping: Callable[[], bool],
    ) -> None:
        self._connect = connect
        self._max_delay = max_retry_delay_s
        self._stopping = stopping
        self._conn: psycopg.Connection[Any] | None = None
        self._schemas: dict[int, tuple[Relation, TableSchema]] = {}
        # The daemon's loop (schemas, heartbeats, slot checks) and the schema follower share
        # the connection and the cache: one at a time, so a reconnect never closes the
        # connection under another user.
        self._lock = threading.RLock()

    def query(self, query: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `query` on the catalog connection, reconnecting with backoff."""
        with self._lock:
            return self._query(query)

    def _query(self, query: Callable[[psycopg.Connection[Any]], T]) -> T:
        backoff = Backoff(max_s=self._max_delay, attempts=ATTEMPTS)
        for attempt in retrying(
            "source_catalog_retry",
            backoff,
            retry_if=_unreachable,
            stopping=self._stopping,
            on_retry=lambda _exc, _delay: self.close(),
        ):
            with attempt:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    return query(self._conn)
                except psycopg.errors.LockNotAvailable:
                    raise  # a lock timeout the query set: its caller decides
                except psycopg.OperationalError as exc:
                    self.close()
                    raise CdcError(
                        ErrorKind.SOURCE_CONNECTION,
                        f"source catalog unreachable: {redact_url(str(exc).strip())}",
                    ) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def schema_for(self, relation: Relation) -> TableSchema:
        with self._lock:
            return self._schema_for(relation)

    def _schema_for(self, relation: Relation) -> TableSchema:
        cached = self._schemas.get(id(relation))
        if cached is not None and cached[0] is relation:
            return cached[1]
        schema = self.query(lambda conn: describe_relation(conn, relation))
        self._schemas[id(relation)] = (relation, schema)
        return schema

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
