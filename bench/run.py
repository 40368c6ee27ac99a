"""`make bench`: every benchmark, each figure a ratio to a baseline measured in the same run;
results written to docs/benchmarks.md.

- streaming_friendly, streaming_realistic: pg_recvlogical (the receive limit) vs
  decode-only vs the daemon end to end (start-up included and apart), on copies of one
  slot, for the friendly and the realistic workload (`bench/streaming.py`,
  `bench/workloads.py`), with the CPU per change of every thread and process;
- hotpath: Python time per change of each stage, without I/O (`bench/hotpath.py`);
- backfill: raw binary `COPY ... TO STDOUT` vs a backfill into both targets;
- latency: commit -> durable in both targets at a steady rate of single-row updates;
- copying: streaming while a table is copied again, against the same writes with no copy
  running (`bench/copying.py`);
- memory: peak anonymous memory applying one large transaction vs a small one;
- scaling: end-to-end throughput for 1, 4, 16 tables and 10 or 100 columns, relative to the
  1-table, 10-column case.

Usage: python bench/run.py [--quick] [--only NAME ...] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import quantiles
from typing import Any

import psycopg
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import copying, hotpath, streaming, workloads
from cdc.apply.daemon import Daemon
from cdc.describe import describe_table
from cdc.dev import localstack
from cdc.load.backfill import Backfill
from cdc.ops.settings import Settings
from cdc.sinks.clickhouse import client as clickhouse
from cdc.sinks.factory import default_sinks
from cdc.stream.snapshot import exported_snapshot

ROOT = Path(__file__).resolve().parents[1]
Results = dict[str, Any]


@contextmanager
def cluster() -> Iterator[tuple[localstack.LocalCluster, Path]]:
    root = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    root.chmod(0o755)
    pg = localstack.LocalCluster(root / "pg", localstack.free_port())
    pg.start()
    try:
        yield pg, root
    finally:
        pg.destroy()


def settings_for(dsn: str, ch_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "source_dsn": SecretStr(dsn),
        "clickhouse_url": SecretStr(f"chdb://{ch_path}"),
        "slot": "cdc",
        "publication": "cdc",
        "status_interval_s": 10.0,
        "heartbeat_interval_s": 0,
        **overrides,
    }
    return Settings(**values)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- backfill ----------------------------------------------------------------------------------


def bench_backfill(rows: int, rounds: int = 5) -> Results:
    """`rounds` times: a backfill into fresh targets, against the mean of the raw copies
    just before and just after it; the round with the median ratio is reported (this
    machine's speed drifts by ±10% within minutes). After each backfill its targets are
    dropped and Postgres checkpoints, untimed: ClickHouse merging a round's parts, or
    Postgres writing its dirty pages, does not slow the raw copy or the next round."""
    with cluster() as (pg, root):
        dsn = pg.paths.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(workloads.TABLE)
            conn.execute(
                "INSERT INTO director.events SELECT g, 'name ' || g, now(), g * 1.25, "
                "jsonb_build_object('k', g), g %% 2 = 0, gen_random_uuid(), g %% 1000, g / 3.0, "
                "repeat('x', 20) FROM generate_series(1, %s) g",
                (rows,),
            )
            conn.execute("VACUUM ANALYZE director.events")
            table = describe_table(conn, "director", "events")

        def raw_copy() -> None:
            with (
                psycopg.connect(dsn) as conn,
                conn.cursor() as cur,
                cur.copy("COPY director.events TO STDOUT (FORMAT binary)") as copy,
            ):
                for _ in copy:
                    pass

        def backfill(round_: int) -> float:
            schema = f"historic_{round_}"
            settings = settings_for(
                dsn, root / "ch", historic_schema=schema, clickhouse_database=f"analytics_{round_}"
            )
            factory = default_sinks(settings)
            for sink in factory():
                sink.prepare([table])
                sink.close()

            def copy() -> None:
                with exported_snapshot(dsn) as snapshot:
                    Backfill(dsn, dsn, schema, "bench", [table], factory,
                             chunk_size=50_000, workers=2).run(snapshot)  # fmt: skip

            return timed(copy)

        def drop_targets(round_: int) -> None:
            client = clickhouse.connect(f"chdb://{root / 'ch'}")
            client.command(f"DROP DATABASE analytics_{round_} SYNC")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA historic_{round_} CASCADE")
                conn.execute("CHECKPOINT")

        # Each backfill between two raw copies, their mean its baseline: the machine's speed
        # drifts during a round, too.
        raws = [timed(raw_copy)]
        measured = []
        for i in range(rounds):
            copied = backfill(i)
            drop_targets(i)
            raws.append(timed(raw_copy))
            measured.append(((raws[-2] + raws[-1]) / 2, copied))
    raw, copied = sorted(measured, key=lambda pair: pair[0] / pair[1])[len(measured) // 2]
    return {
        "rows": rows,
        "raw_copy_rows_per_s": round(rows / raw),
        "backfill_rows_per_s": round(rows / copied),
        "ratio": round(raw / copied, 3),
        "ratios": [round(r / c, 3) for r, c in measured],  # in the order the rounds ran
    }


# -- latency -----------------------------------------------------------------------------------


def bench_latency(rate: int, seconds: float) -> Results:
    with cluster() as (pg, root):
        dsn = pg.paths.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA director")
            conn.execute(
                "CREATE TABLE director.cards (id int PRIMARY KEY, n bigint, at timestamptz)"
            )
            conn.execute(
                "INSERT INTO director.cards SELECT g, 0, now() FROM generate_series(1, 1000) g"
            )
        daemon = Daemon(settings_for(dsn, root / "ch", batch_latency_ms=50))
        stop = threading.Event()
        thread = threading.Thread(target=daemon.run, args=(stop,))
        thread.start()
        while not daemon.streaming.is_set():
            time.sleep(0.05)
        sent = 0
        writers = 2
        per_writer = rate / writers

        def write(offset: int) -> None:
            nonlocal sent
            with psycopg.connect(dsn, autocommit=True) as conn:
                start = time.perf_counter()
                i = 0
                while time.perf_counter() - start < seconds:
                    conn.execute(
                        "UPDATE director.cards SET n = n + 1, at = now() WHERE id = %s",
                        (offset + i % 500 + 1,),
                    )
                    i += 1
                    sent += 1
                    ahead = i / per_writer - (time.perf_counter() - start)
                    if ahead > 0:
                        time.sleep(ahead)

        threads = [threading.Thread(target=write, args=(w * 500,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2)
        stop.set()
        thread.join()
        lags = sorted(daemon.stats.lags)
    cut = quantiles(lags, n=100, method="inclusive")
    return {
        "target_tx_per_s": rate,
        "achieved_tx_per_s": round(sent / seconds),
        "transactions": len(lags),
        "p50_ms": round(cut[49] * 1000, 1),
        "p99_ms": round(cut[98] * 1000, 1),
        "batch_latency_ms": 50,
    }


def bench_copying(rows: int, seconds: float) -> Results:
    with cluster() as (pg, root):
        settings = settings_for(pg.paths.dsn, root / "ch", batch_latency_ms=50,
                                schema_poll_interval_s=0.5)  # fmt: skip
        return copying.measure(pg.paths.dsn, settings, rows, seconds)


# -- memory ------------------------------------------------------------------------------------

# The peak of RssAnon (the heap: what buffering a transaction would grow), sampled every
# 20 ms; and the peak RSS, which also counts the pages of chdb's shared library that are
# mapped in, more of them the more of it the page cache holds (331 to 1350 MB measured for
# the same run).
MEMORY_SCRIPT = """
import json, resource, sys, threading, time
from bench.run import settings_for
from pathlib import Path
from cdc.apply.daemon import Daemon
dsn, ch, expected = sys.argv[1], Path(sys.argv[2]), int(sys.argv[4])
def anon_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
daemon = Daemon(settings_for(dsn, ch, memory_budget_mb=64, initial_load=False))
stop = threading.Event()
thread = threading.Thread(target=daemon.run, args=(stop,))
thread.start()
peak = anon_kb()
while daemon.stats.changes < expected and thread.is_alive():
    time.sleep(0.02)
    peak = max(peak, anon_kb())
stop.set(); thread.join()
print(json.dumps({"changes": daemon.stats.changes, "anon_mb": max(peak, anon_kb()) / 1024,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_memory(large: int, small: int, rounds: int = 3) -> Results:
    """`rounds` times the small then the large transaction, each in a process of its own;
    the round with the median difference is reported (one run's peak moves by ±20 MB:
    the embedded engine's merges and allocator)."""
    measured = [{rows: _memory_peak(rows) for rows in (small, large)} for _ in range(rounds)]
    differences = [m[large]["anon_mb"] - m[small]["anon_mb"] for m in measured]
    median = sorted(range(rounds), key=differences.__getitem__)[rounds // 2]
    peaks = measured[median]
    return {
        "small_rows": small,
        "large_rows": large,
        "small_peak_mb": round(peaks[small]["anon_mb"]),
        "large_peak_mb": round(peaks[large]["anon_mb"]),
        "difference_mb": round(differences[median]),
        "rounds_mb": [round(d) for d in differences],
        "small_rss_mb": round(peaks[small]["rss_mb"]),
        "large_rss_mb": round(peaks[large]["rss_mb"]),
    }


def _memory_peak(rows: int) -> dict[str, float]:
    """The daemon's peak memory applying one `rows`-row transaction (`MEMORY_SCRIPT`)."""
    with cluster() as (pg, root):
        dsn = pg.paths.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA director")
            conn.execute("CREATE TABLE director.t (id int PRIMARY KEY, note text)")
            conn.execute("CREATE PUBLICATION cdc FOR TABLE director.t")
            conn.execute("SELECT pg_create_logical_replication_slot('cdc', 'pgoutput')")
            conn.execute(
                "INSERT INTO director.t SELECT g, md5(g::text) FROM generate_series(1, %s) g",
                (rows,),
            )
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, dsn, str(root / "ch"), "-", str(rows)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["changes"] == rows, result
        return result


# -- scaling -----------------------------------------------------------------------------------


def bench_scaling(changes: int) -> Results:
    cases = [(1, 10), (4, 10), (16, 10), (1, 100)]
    rates: dict[str, float] = {}
    for tables, width in cases:
        with cluster() as (pg, root):
            dsn = pg.paths.dsn
            columns = ", ".join(f"c{i} text" for i in range(width - 1))
            values = ", ".join(f"'v{i}-' || g" for i in range(width - 1))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE SCHEMA director")
                for t in range(tables):
                    conn.execute(f"CREATE TABLE director.t{t} (id bigint PRIMARY KEY, {columns})")
                conn.execute("CREATE PUBLICATION cdc FOR TABLES IN SCHEMA director")
                conn.execute("SELECT pg_create_logical_replication_slot('cdc', 'pgoutput')")
                per_table = changes // tables
                for t in range(tables):
                    for start in range(0, per_table, 1000):
                        conn.execute(
                            f"INSERT INTO director.t{t} SELECT g, {values} "
                            f"FROM generate_series({start + 1}, {min(start + 1000, per_table)}) g"
                        )
            daemon = Daemon(settings_for(dsn, root / "ch", initial_load=False))
            expected = per_table * tables
            elapsed = timed(lambda d=daemon, e=expected: streaming.run_until(d, e))  # type: ignore[misc]
            rates[f"{tables} tables x {width} columns"] = expected / elapsed
    base = rates["1 tables x 10 columns"]
    return {
        name: {"changes_per_s": round(r), "ratio": round(r / base, 3)} for name, r in rates.items()
    }


# -- report ------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def streaming_section(s: Results) -> list[str]:
    rows = s["every_round"]
    return [
        f"## Streaming, {s['workload']} workload (changes/s, ratio to `pg_recvlogical`)",
        "",
        f"{s['changes']:,} changes of a 10-column table: {s['description']}. Written by a "
        "procedure before anything is measured, then replayed from copies of one slot: "
        "(a) `pg_recvlogical` to /dev/null, and (c) the daemon as `cdc run` starts it (a "
        "process of its own: imports, setup, streaming; its modules byte-compiled "
        "beforehand, as `pip install` leaves them) into fresh historic and ClickHouse "
        "targets, from its start until both hold every change. Start-up is its start to the "
        f"first change read. (a) and (c) ran alternately in {s['rounds']} rounds; medians of "
        "the per-round figures.",
        "",
        "| measurement | changes/s | ratio to (a) |",
        "|---|---|---|",
        f"| (a) pg_recvlogical to /dev/null | {s['pg_recvlogical_changes_per_s']:,} | 1.0 |",
        f"| (b) decode and assemble only | {s['decode_changes_per_s']:,} | "
        f"{round(s['decode_changes_per_s'] / s['pg_recvlogical_changes_per_s'], 3)} |",
        f"| (c) end to end, start-up included | {s['daemon_changes_per_s']:,} | **{s['ratio']}** |",
        f"| (c) end to end, start-up excluded | {s['daemon_streaming_changes_per_s']:,} | "
        f"**{s['ratio_without_startup']}** |",
        "",
        f"Start-up: **{s['startup_s']} s** (of which importing the daemon's modules "
        f"{s['startup_detail']['imports_s']:.2f} s; {s['startup_detail']['cpu_s']:.2f} s of "
        "CPU in the daemon and Postgres).",
        "",
        "| round | load average | (a) s | (c) s | start-up s | ratio | without start-up |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {i} | {r['load_average']} | {r['pg_recvlogical_s']} | {r['daemon_s']} | "
            f"{r['startup_s']} | {r['ratio']} | {r['ratio_without_startup']} |"
            for i, r in enumerate(rows, 1)
        ),
        "",
    ]


def cpu_section(realistic: Results | None, friendly: Results | None) -> list[str]:
    """µs of CPU per change of each thread and process while the daemon streams, a column
    per workload measured."""
    measured = [(name, s) for name, s in (("realistic", realistic), ("friendly", friendly)) if s]
    if not measured:
        return []
    names = list(dict.fromkeys(k for _, s in measured for k in s["cpu_us_per_change"]))
    baseline = streaming.BASELINE_WALSENDER

    def total(s: Results) -> str:
        return f"{sum(us for k, us in s['cpu_us_per_change'].items() if k != baseline):.1f}"

    def cell(s: Results, name: str) -> str:
        return str(s["cpu_us_per_change"].get(name, "-"))

    return [
        "## Where the CPU goes while the daemon streams",
        "",
        "µs of CPU per change, from the first change read to every change in both targets "
        "(the rounds above, median per row), read from `/proc/<pid>/task/*/stat`: each "
        "thread of the daemon's process (the embedded ClickHouse engine runs in it, on "
        "threads of its own) and every Postgres process. Taken by `make bench`, or "
        "`python bench/streaming.py --workload realistic`.",
        "",
        "| where | " + " | ".join(f"{name} workload" for name, _ in measured) + " |",
        "|---|" + "---|" * len(measured),
        *(
            f"| {name} | " + " | ".join(cell(s, name) for _, s in measured) + " |"
            for name in names
            if name != baseline
        ),
        "| **total** | " + " | ".join(f"**{total(s)}**" for _, s in measured) + " |",
        f"| {baseline} | " + " | ".join(cell(s, baseline) for _, s in measured) + " |",
        "",
    ]


def write_report(results: Results, command: str, out: Path) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Reproduce with `{command}` (written by `bench/run.py`). Machine: {machine()}; "
        "PostgreSQL from local binaries, ClickHouse as the embedded engine (chdb), both on "
        "the same machine as the daemon. Each figure is relative to a baseline measured in "
        "the same run.",
        "",
    ]
    for name in ("streaming_friendly", "streaming_realistic"):
        if s := results.get(name):
            lines += streaming_section(s)
    lines += cpu_section(results.get("streaming_realistic"), results.get("streaming_friendly"))
    if h := results.get("hotpath"):
        lines += [
            "## Python time per change, by stage",
            "",
            "The friendly streaming workload's messages recorded once and replayed through "
            "each stage in one process, no I/O (`bench/hotpath.py`, best of 5 rounds); the "
            "reading and writing threads of the daemon spend this on the GIL.",
            "",
            "| stage | µs per change |",
            "|---|---|",
            *(f"| {stage} | {us} |" for stage, us in h.items()),
            "",
        ]
    if b := results.get("backfill"):
        lines += [
            "## Backfill",
            "",
            f"{b['rows']:,} rows of the same table: raw binary `COPY TO STDOUT` "
            f"{b['raw_copy_rows_per_s']:,} rows/s; backfill into both targets "
            f"{b['backfill_rows_per_s']:,} rows/s; ratio **{b['ratio']}** (target 0.3), the "
            f"median of {len(b['ratios'])} rounds (ratios in the order they ran: "
            f"{', '.join(map(str, b['ratios']))}; "
            "each backfill against the mean of the raw copies just before and after it).",
            "",
        ]
    if lat := results.get("latency"):
        lines += [
            "## Latency",
            "",
            f"Single-row update transactions at a target of {lat['target_tx_per_s']:,}/s "
            f"(achieved {lat['achieved_tx_per_s']:,}/s), commit at the source to durable in "
            f"both targets, over {lat['transactions']:,} transactions: p50 "
            f"**{lat['p50_ms']} ms**, p99 **{lat['p99_ms']} ms** (target p99 < 200 ms; batches "
            f"close after {lat['batch_latency_ms']} ms).",
            "",
        ]
    if c := results.get("copying"):
        lines += copying.section(c)
    if m := results.get("memory"):
        lines += [
            "## Memory",
            "",
            f"Peak anonymous memory (RssAnon, sampled every 20 ms) of the daemon applying one "
            f"{m['large_rows']:,}-row transaction: {m['large_peak_mb']} MB; one "
            f"{m['small_rows']:,}-row transaction: {m['small_peak_mb']} MB; difference "
            f"**{m['difference_mb']} MB** (target < 100 MB; the median of {len(m['rounds_mb'])} "
            f"rounds: {', '.join(str(d) for d in m['rounds_mb'])} MB), with "
            "`memory_budget_mb = 64`: a "
            "transaction is held in memory up to 64 MB, then spilled to a file. Peak RSS, which "
            "also counts the "
            f"pages of the embedded engine's library mapped in (more of them the more of it "
            f"the page cache holds): {m['large_rss_mb']} and {m['small_rss_mb']} MB.",
            "",
        ]
    if sc := results.get("scaling"):
        lines += [
            "## Scaling",
            "",
            "| case | changes/s | ratio to 1 table x 10 columns |",
            "|---|---|---|",
        ]
        for name, row in sc.items():
            lines.append(f"| {name} | {row['changes_per_s']:,} | {row['ratio']} |")
        lines.append("")
    analysis = Path(__file__).with_name("analysis.md")  # the profile, kept by hand
    out.write_text("\n".join(lines) + "\n" + analysis.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    quick = args.quick
    changes = 100_000 if quick else 1_000_000
    runs: dict[str, Callable[[], Any]] = {
        "streaming_friendly": lambda: streaming.measure(changes, workloads.FRIENDLY),
        "streaming_realistic": lambda: streaming.measure(changes, workloads.REALISTIC),
        "hotpath": lambda: hotpath.measure(changes // 5),
        "backfill": lambda: bench_backfill(changes),
        "latency": lambda: bench_latency(500, 5.0) if quick else bench_latency(2_000, 20.0),
        "copying": lambda: bench_copying(100_000 if quick else 1_000_000, 3.0 if quick else 8.0),
        "memory": lambda: bench_memory(200_000 if quick else 5_000_000, 10_000),
        "scaling": lambda: bench_scaling(50_000 if quick else 200_000),
    }
    results: Results = {}
    for name, run in runs.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        results[name] = run()
        print(json.dumps(results[name], indent=2), flush=True)
    command = "make bench" + (" BENCH_ARGS=--quick" if quick else "")
    write_report(results, command, args.out)
    print(f"wrote {args.out}; peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")  # fmt: skip


if __name__ == "__main__":
    main()
