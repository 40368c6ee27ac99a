"""Streaming while the schema follower copies a table again.

A table rewritten at the source (here `ADD COLUMN ... DEFAULT random()`, a volatile
default) is copied again at a fresh snapshot while its changes keep streaming; a batch
must not fold a change from after the copy's snapshot onto an image from before it
(`cdc.apply.copybounds`). Two writers update random keys of the table in single-row
transactions at a steady rate (`RATE`), first with no copy running (the baseline), then
while it is copied again;
for each phase: the transactions written, the batches the daemon made of them, and how far
behind the daemon was when the writes stopped (seconds until it had applied them all).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
from structlog.testing import capture_logs

from cdc.apply.daemon import Daemon
from cdc.ops.settings import Settings

WRITERS = 2
RATE = 1_500  # transactions per second, of all writers (what the machine sustains beside a copy)


def _write(dsn: str, rows: int, seconds: float) -> int:
    """Single-row updates of random keys by `WRITERS` connections for `seconds`."""
    counts = [0] * WRITERS
    per_writer = RATE / WRITERS

    def write(index: int) -> None:
        rng = random.Random(index)
        start = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            while (elapsed := time.monotonic() - start) < seconds:
                ahead = counts[index] / per_writer - elapsed
                if ahead > 0:
                    time.sleep(ahead)
                    continue
                conn.execute("UPDATE director.busy SET n = n + 1 WHERE id = %s",
                             (rng.randint(1, rows),))  # fmt: skip
                counts[index] += 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def _phase(daemon: Daemon, dsn: str, rows: int, seconds: float) -> dict[str, Any]:
    transactions, batches = daemon.stats.transactions, daemon.stats.batches
    written = _write(dsn, rows, seconds)
    ended = time.monotonic()
    while daemon.stats.transactions < transactions + written:
        time.sleep(0.01)
    return {
        "transactions": written,
        "tx_per_s": round(written / seconds),
        "batches": daemon.stats.batches - batches,
        "behind_s": round(time.monotonic() - ended, 2),
    }


def measure(dsn: str, settings: Settings, rows: int, seconds: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA director")
        conn.execute("CREATE TABLE director.busy (id int PRIMARY KEY, n bigint, body text)")
        conn.execute(
            "INSERT INTO director.busy SELECT g, 0, md5(g::text) FROM generate_series(1, %s) g",
            (rows,),
        )
    daemon = Daemon(settings)
    stop = threading.Event()
    with capture_logs() as logs:
        thread = threading.Thread(target=daemon.run, args=(stop,))
        thread.start()
        try:
            while not daemon.streaming.is_set():
                time.sleep(0.05)
            baseline = _phase(daemon, dsn, rows, seconds)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ALTER TABLE director.busy ADD COLUMN r float8 DEFAULT random()")
            while not any(e["event"] == "table_load_started" for e in logs):
                time.sleep(0.01)
            copying = _phase(daemon, dsn, rows, seconds)
            while not any(e["event"] == "table_load_done" for e in logs):
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join()
    done = next(e for e in logs if e["event"] == "table_load_done")
    return {"rows": rows, "seconds": seconds, "copied_rows": done["rows"],
            "baseline": baseline, "copying": copying}  # fmt: skip


def section(c: dict[str, Any]) -> list[str]:
    def row(name: str, p: dict[str, Any]) -> str:
        return (f"| {name} | {p['transactions']:,} | {p['tx_per_s']:,} | {p['batches']:,} "
                f"| {p['behind_s']} |")  # fmt: skip

    return [
        "## Streaming while a table is copied again",
        "",
        f"A {c['rows']:,}-row table, rewritten at the source (a volatile `ADD COLUMN` "
        "default), is copied again by the schema follower while two connections update "
        f"random keys of it in single-row transactions at {RATE:,}/s for {c['seconds']:g} s "
        "(`bench/copying.py`); the same writes with no copy running are the baseline. "
        "Behind: seconds from the last write until the daemon had applied every one.",
        "",
        "| phase | transactions | per s | batches | behind (s) |",
        "|---|---|---|---|---|",
        row("no copy running", c["baseline"]),
        row("while the table is copied again", c["copying"]),
        "",
    ]
