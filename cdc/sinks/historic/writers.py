"""The historic sink's connections: one per writer, opened on first use and again after a
lost connection; a large batch's shares written on all of them at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from cdc.classify import postgres_error
from cdc.errors import CdcError, ErrorKind
from cdc.ops.settings import redact_url
from cdc.sinks.historic.sql import KEY_PROBES_SQL, SESSION_SQL
from cdc.stream.session import canonical_dsn

T = TypeVar("T")


class Writers:
    def __init__(
        self, dsn: str, count: int, on_reconnect: Callable[[], None], role: str = "writer"
    ) -> None:
        """`on_reconnect`: called when the first writer opens a new connection (what was
        learned about the targets on the old one may be out of date). `role` names the
        connections (`application_name`)."""
        self.dsn = dsn
        self._role = role
        self._conns: list[psycopg.Connection[Any] | None] = [None] * max(1, count)
        self._pool: ThreadPoolExecutor | None = None
        self._on_reconnect = on_reconnect

    def __len__(self) -> int:
        return len(self._conns)

    def _connection(self, writer: int) -> psycopg.Connection[Any]:
        conn = self._conns[writer]
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(
                    canonical_dsn(self.dsn), application_name=f"cdc historic {self._role} {writer}"
                )
                for statement in (SESSION_SQL, *KEY_PROBES_SQL):
                    conn.execute(statement)
                conn.commit()
            except psycopg.Error as exc:
                raise CdcError(
                    ErrorKind.SINK_CONNECTION,
                    f"cannot connect to the historic database {redact_url(self.dsn)}: "
                    f"{redact_url(str(exc).strip())}",
                ) from exc
            self._conns[writer] = conn
            if writer == 0:
                self._on_reconnect()
        return conn

    def _drop(self, writer: int) -> None:
        conn = self._conns[writer]
        if conn is not None:
            conn.close()
            self._conns[writer] = None

    def close(self) -> None:
        for writer in range(len(self._conns)):
            self._drop(writer)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    @contextmanager
    def transaction(self, writer: int = 0) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on the historic database; a lost connection is a sink
        connection failure (retried), and the next write reconnects."""
        conn = self._connection(writer)
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            error = postgres_error(exc, ErrorKind.SINK_CONNECTION, "historic write failed")
            if error.kind is ErrorKind.SINK_CONNECTION:
                # Only this writer's connection: this may run in a pool thread, which
                # cannot shut its own pool down. The others fail on their next use.
                self._drop(writer)
            raise error from exc

    def each(self, write: Callable[[int, T], None], shares: Sequence[T]) -> None:
        """`write(k, shares[k])` for every writer k at once (the first on this thread);
        returns when all returned, raising the first error."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self) - 1, thread_name_prefix="cdc-historic")
        others = [self._pool.submit(write, k, shares[k]) for k in range(1, len(shares))]
        try:
            write(0, shares[0])
        finally:
            errors = [exc for future in others if (exc := future.exception()) is not None]
        if errors:
            raise errors[0]
