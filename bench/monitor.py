"""The drift monitor's cost, measured in one run on one private cluster.

(a) One pass on its own, with no row budget: source rows compared per second, and the CPU
    it takes in this process (the monitor and the embedded ClickHouse) and in Postgres.
(b) End to end: a writer updates every row of the table in 1,000-row transactions while
    the daemon streams, with the monitor off and on (a 1 s interval, so it never rests,
    and the default row budget), alternating; each round's changes applied per second from
    the first write to the last change in both targets, the median round per setting.

Usage: python bench/monitor.py [--rows N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import psycopg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import cluster, settings_for
from cdc.apply.daemon import HEARTBEAT_PREFIX, Daemon
from cdc.check.monitor import Monitor
from cdc.ops.settings import Settings

TABLE = """
CREATE SCHEMA director;
CREATE TABLE director.events (
    id bigint PRIMARY KEY, name text, at timestamptz, amount numeric(14,4), doc jsonb,
    active bool, ref uuid, qty int, ratio float8, note text);
INSERT INTO director.events
SELECT g, 'name ' || g, now() - g * interval '1 second', g * 1.25,
       jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b')),
       g % 2 = 0, gen_random_uuid(), g % 1000, g / 3.0, repeat('x', 20)
FROM generate_series(1, {rows}) g;
ANALYZE director.events;
"""
UPDATE = "UPDATE director.events SET amount = amount + 1 WHERE id > %s AND id <= %s"
TICKS = os.sysconf("SC_CLK_TCK")


def postgres_cpu(pid: int) -> float:
    """CPU seconds of the postmaster, its exited children and its live children."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
        if int(entry.name) == pid:
            total += utime + stime + cutime + cstime
        elif ppid == pid:
            total += utime + stime
    return total / TICKS


def started(settings: Settings) -> tuple[Daemon, threading.Event, threading.Thread]:
    daemon = Daemon(settings)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    while not daemon.streaming.is_set():
        assert thread.is_alive(), "the daemon stopped"
        time.sleep(0.05)
    return daemon, stop, thread


def one_pass(settings: Settings, pg_pid: int) -> dict[str, Any]:
    daemon, stop, thread = started(settings)
    try:
        monitor = Monitor(
            settings.model_copy(update={"monitor_rows_per_s": 10**9, "monitor_interval_s": 1}),
            daemon.position, daemon.metrics, lambda: daemon.sinks[1].client,  # type: ignore[attr-defined]
            daemon.sink_factory, lambda: (), daemon.log, HEARTBEAT_PREFIX,
        )  # fmt: skip
        cpu, pg_cpu, wall = time.process_time(), postgres_cpu(pg_pid), time.perf_counter()
        monitor.run_pass()
        wall = time.perf_counter() - wall
        cpu, pg_cpu = time.process_time() - cpu, postgres_cpu(pg_pid) - pg_cpu
        monitor.stop()
        rows = daemon.metrics.registry.get_sample_value("cdc_monitor_rows_checked_total") or 0
        return {
            "rows": int(rows), "seconds": round(wall, 2), "rows_per_s": round(rows / wall),
            "process_cpu_s": round(cpu, 2), "postgres_cpu_s": round(pg_cpu, 2),
            "cpu_us_per_row": round((cpu + pg_cpu) / rows * 1e6, 2),
        }  # fmt: skip
    finally:
        stop.set()
        thread.join()


def streamed(settings: Settings, dsn: str, rows: int) -> float:
    """Changes per second from the first update to the last change in both targets."""
    daemon, stop, thread = started(settings)
    try:
        time.sleep(1.5)  # the monitor's first pass starts after its interval
        begun = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for start in range(0, rows, 1000):
                conn.execute(UPDATE, (start, start + 1000))
        while daemon.stats.changes < rows:
            assert thread.is_alive(), "the daemon stopped"
            time.sleep(0.01)
        return rows / (time.perf_counter() - begun)
    finally:
        stop.set()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40)  # errors only
    )
    with cluster() as (pg, root):
        dsn = pg.paths.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(TABLE.format(rows=args.rows))
            pid = int((Path(pg.paths.data) / "postmaster.pid").read_text().split()[0])
        off = settings_for(dsn, root / "ch", monitor_interval_s=0)
        on = off.model_copy(update={"monitor_interval_s": 1.0})
        _, stop, thread = started(off)  # the initial load
        stop.set()
        thread.join()
        cost = one_pass(off, pid)
        print("one pass:", json.dumps(cost), flush=True)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for name, settings in (("off", off), ("on", on)):
                rates[name].append(streamed(settings, dsn, args.rows))
                print(f"  monitor {name}: {rates[name][-1]:,.0f} changes/s", flush=True)
        # Each round's on against its own off (run just before it): the machine's speed
        # drifts from round to round more than within one.
        pairs = [round(a / b, 3) for a, b in zip(rates["on"], rates["off"], strict=True)]
        result: dict[str, Any] = {name: round(median(r)) for name, r in rates.items()}
        result["ratio_on_to_off"] = median(pairs)
        result["every_round"] = pairs
        result["monitor_rows_per_s"] = on.monitor_rows_per_s
        print("end to end:", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
