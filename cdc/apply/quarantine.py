"""Tables set aside: a table whose rows the targets cannot hold (or whose schema cannot be
replicated) is quarantined with the reason, recorded for `cdc status` and logged, while the
other tables go on. Written by the apply threads, the follower and the main thread."""

from __future__ import annotations

import threading
from typing import Any

from cdc.errors import CdcError
from cdc.ops import status
from cdc.ops.settings import Settings
from cdc.states import TableState

TableKey = tuple[str, str]  # (schema, table)


class Quarantine:
    def __init__(self, settings: Settings, log: Any) -> None:
        self._settings = settings
        self._log = log
        self._tables: dict[TableKey, str] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._tables

    def tables(self) -> dict[TableKey, str]:
        """The quarantined tables and why (a copy: safe from any thread)."""
        with self._lock:
            return dict(self._tables)

    def add(self, name: TableKey, exc: CdcError) -> None:
        with self._lock:
            self._tables[name] = str(exc)
        settings = self._settings
        status.record_table(settings.require_historic_dsn(), settings.historic_schema,
                            name[1], TableState.QUARANTINED, str(exc))  # fmt: skip
        self._log.error(
            "table_quarantined", table=f"{name[0]}.{name[1]}", error=str(exc),
            hint=exc.policy.hint,
        )  # fmt: skip
