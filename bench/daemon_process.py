"""The daemon as `cdc run` starts it, in a process of its own, for one streaming round.

Started by `bench/streaming.py` with the settings as JSON and the number of changes to
wait for. It imports the daemon (the start-up a user sees includes the imports), builds
it and runs it on the main thread until SIGTERM, and prints one JSON line per milestone
on stdout, each with its `time.monotonic()` (the same clock in every process):
`imported`, `first_change` (the first transaction read from the slot), `done` (every
change applied in both targets; with the daemon's threads, native id -> name) and
`stopped` (stopped, drained and acknowledged; with what ClickHouse holds).

Usage: python bench/daemon_process.py SETTINGS_JSON CHANGES
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cdc.cli  # noqa: F401  (what the `cdc` command imports before `cdc run` starts)
from cdc.apply import daemon as daemon_module
from cdc.apply.assembler import Event
from cdc.apply.changes import Transaction
from cdc.ops import logs
from cdc.ops.settings import Settings
from cdc.sinks.clickhouse import client as clickhouse
from cdc.stream.source import ChangeSource

POLL_S = 0.005
# What the targets must hold after the round, as in the source (`bench/streaming.py`).
FINGERPRINT = "SELECT count(), sum(qty), sum(length(note)) FROM analytics.events_current"


def report(event: str, **values: Any) -> None:
    print(json.dumps({"event": event, "at": time.monotonic(), **values}), flush=True)


class ObservedSource(ChangeSource):
    """The daemon's change source, reporting when the first transaction is read."""

    def events(self, timeout: float) -> Iterator[Event | None]:
        events = super().events(timeout)
        for event in events:
            if isinstance(event, Transaction):
                report("first_change")
                yield event
                break
            yield event
        yield from events


def watch(daemon: daemon_module.Daemon, changes: int, stop: threading.Event) -> None:
    while daemon.stats.changes < changes and not stop.is_set():
        time.sleep(POLL_S)
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    report("done", changes=daemon.stats.changes, threads=names)


def main() -> None:
    report("imported")
    logs.configure(json=True)  # on stderr, as `cdc run` does when it is not on a terminal
    values, changes = json.loads(sys.argv[1]), int(sys.argv[2])
    daemon_module.ChangeSource = ObservedSource  # type: ignore[attr-defined]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon = daemon_module.Daemon(Settings(**values))
    threading.Thread(target=watch, args=(daemon, changes, stop), name="bench-watch").start()
    daemon.run(stop)
    stop.set()
    client = clickhouse.connect(values["clickhouse_url"])
    row = client.query(FINGERPRINT).result_rows[0]
    client.close()
    report("stopped", changes=daemon.stats.changes, applied_lsn=str(daemon.stats.applied_lsn),
           clickhouse=[int(v) for v in row])  # fmt: skip


if __name__ == "__main__":
    main()
