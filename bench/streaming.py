"""Streaming throughput against the receive limit, all in one run on one slot's copies.

(a) `pg_recvlogical` to /dev/null: what the walsender can deliver (the baseline);
(b) this project's change source: decode and assemble every transaction;
(c) the daemon end to end, as `cdc run` starts it (a process of its own: imports, setup,
    then streaming; `bench/daemon_process.py`; its modules byte-compiled first, as an
    installed package's are), into fresh historic and ClickHouse targets, from its start
    until both hold every change; its start-up (start to the first change read) is
    reported apart.

The workload (`bench/workloads.py`, friendly or realistic) is written before anything is
measured. (a) and (c) run alternately in several rounds; the medians of the per-round
ratios are reported, every round listed. During (c) the CPU time of every thread of the
daemon and of every Postgres process is read from /proc (`bench/cpu.py`).

Usage: python bench/streaming.py [--workload friendly|realistic] [changes]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpu, rounds, workloads
from bench.workloads import Workload
from cdc.apply.changes import Transaction
from cdc.apply.daemon import Daemon
from cdc.dev import localstack
from cdc.protocol.lsn import Lsn
from cdc.stream.source import ChangeSource, SourceConfig

ROOT = Path(__file__).resolve().parents[1]
# CDC_BENCH_DAEMON: another checkout's copy of daemon_process.py, run from that checkout.
DAEMON_SCRIPT = Path(
    os.environ.get("CDC_BENCH_DAEMON") or Path(__file__).with_name("daemon_process.py")
)
# What both targets must hold after a round, as in the source.
FINGERPRINT = "SELECT count(*), sum(qty), sum(length(note)) FROM {}.events{}"
SAMPLE_EVERY_S = 0.05  # the walsender under pg_recvlogical, which ends with it
# Where CPU goes, in the pipeline's order: the components of the CPU table.
WALSENDER = "Postgres: walsender (decoding the WAL, sending pgoutput)"
MAIN = "daemon, main thread: read, decode, assemble, fold into batches"
COMPLETION_STAGE = "daemon, completion stage (cdc-apply-1): row text, donor reads, fill"
HISTORIC_STAGE = "daemon, historic stage (cdc-apply-2): binary form, COPY and upsert"
HISTORIC_WRITERS = "daemon, historic stage's second writer (cdc-historic_0)"
BACKENDS = "Postgres: the daemon's backends (historic donor reads, COPY, upsert; catalog)"
CLICKHOUSE_STAGE = "daemon, ClickHouse stage (cdc-apply-3): value checks, insert, bookkeeping"
ENGINE_INSERTS = "ClickHouse engine: insert pipelines (its ThreadPool threads)"
ENGINE_MERGES = "ClickHouse engine: background merges (its MergeMutate threads)"
ENGINE_OTHER = "ClickHouse engine: other threads"
ENDED = "daemon: threads that ended while streaming"
OTHER = "daemon: other Python threads (the benchmark's watcher)"
BACKGROUND = "Postgres: background (WAL writer, checkpointer, autovacuum)"
COMPONENTS = (WALSENDER, MAIN, COMPLETION_STAGE, HISTORIC_STAGE, HISTORIC_WRITERS, BACKENDS,
              CLICKHOUSE_STAGE, ENGINE_INSERTS, ENGINE_MERGES, ENGINE_OTHER, ENDED, OTHER,
              BACKGROUND)  # fmt: skip
THREAD_ROLES = {"MainThread": MAIN, "cdc-apply-1": COMPLETION_STAGE,
                "cdc-apply-2": HISTORIC_STAGE, "cdc-apply-3": CLICKHOUSE_STAGE}  # fmt: skip
ENGINE_ROLES = {"ThreadPool": ENGINE_INSERTS, "MergeMutate": ENGINE_MERGES}
BASELINE_WALSENDER = "Postgres: walsender under pg_recvlogical (for reference)"
PROCESS = -1  # the daemon's process as a whole, among its threads


def timed(label: str, fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - start
    print(f"  {label}: {elapsed:.2f} s", flush=True)
    return elapsed


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def decode_only(dsn: str, slot: str, end: Lsn, expected: int) -> None:
    changes = 0
    with ChangeSource(SourceConfig(dsn, slot, "bench", streaming=False)) as source:
        source.start()
        for event in source.events(2.0):
            if isinstance(event, Transaction):
                changes += sum(1 for _ in event.changes())
                event.close()
                source.acknowledge(event.end_lsn)
                if changes >= expected or event.end_lsn >= end:
                    break
    assert changes == expected, (changes, expected)


def run_until(daemon: Daemon, expected: int) -> None:
    """Run `daemon` on a thread until it applied `expected` changes."""
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,))
    thread.start()
    while daemon.stats.changes < expected and thread.is_alive():
        time.sleep(0.02)
    stop.set()
    thread.join()
    assert daemon.stats.changes == expected, (daemon.stats.changes, expected)


@dataclass(frozen=True)
class Loaded:
    cluster: localstack.LocalCluster
    root: Path
    end: Lsn  # the WAL's end after the workload
    fingerprint: tuple[int, ...]  # the source table's, for FINGERPRINT


@contextmanager
def loaded_slot(n: int, workload: Workload = workloads.FRIENDLY) -> Iterator[Loaded]:
    """A private cluster whose slot 'base' holds the workload's `n` changes (publications
    'bench' and 'cdc' publish its table), its WAL flushed and checkpointed."""
    root = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    root.chmod(0o755)
    cluster = localstack.LocalCluster(root / "pg", localstack.free_port())
    cluster.start()
    try:
        with psycopg.connect(cluster.paths.dsn, autocommit=True) as conn:
            conn.execute(workloads.TABLE)
            conn.execute(workload.procedure)
            conn.execute("CREATE PUBLICATION bench FOR TABLE director.events")
            conn.execute("CREATE PUBLICATION cdc FOR TABLE director.events")
            conn.execute("SELECT pg_create_logical_replication_slot('base', 'pgoutput')")
            call, args = workload.call(n)
            timed(f"writing the {workload.name} workload", conn.execute, call, args)
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            conn.execute("CHECKPOINT")  # flushes the WAL, and no checkpoint during a round
            fingerprint = conn.execute(FINGERPRINT.format("director", "")).fetchone()
            assert row is not None and fingerprint is not None
        yield Loaded(cluster, root, Lsn.parse(row[0]), tuple(int(v or 0) for v in fingerprint))
    finally:
        cluster.destroy()


def recvlogical(loaded: Loaded, slot: str) -> tuple[float, float]:
    """pg_recvlogical from `slot` to the end: (seconds, CPU seconds of its walsender)."""
    postmaster = cpu.postmaster_pid(loaded.cluster.paths.data)
    earlier = set(cpu.postgres_processes(postmaster))  # a walsender still exiting is not its
    walsender: dict[int, int] = {}
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(loaded.cluster.bindir / "pg_recvlogical"), "-d", loaded.cluster.paths.dsn,
         "--slot", slot, "--start", "--endpos", str(loaded.end), "-o", "proto_version=1",
         "-o", "publication_names=bench", "-f", "/dev/null", "--no-loop"],
    )  # fmt: skip
    while process.poll() is None:
        for pid, (role, ticks) in cpu.postgres_processes(postmaster).items():
            if role == "walsender" and pid not in earlier:
                walsender[pid] = ticks
        time.sleep(SAMPLE_EVERY_S)
    elapsed = time.perf_counter() - start
    assert process.returncode == 0, process.returncode
    return elapsed, sum(walsender.values()) / cpu.TICKS_PER_S


@dataclass(frozen=True)
class DaemonRound:
    total_s: float
    startup_s: float
    imported_s: float  # start to the daemon's modules imported
    startup_cpu_s: float  # the daemon's process and Postgres, start to the first change
    cpu_s: dict[str, float]  # component -> CPU seconds, first change to the end
    cpu_detail_s: dict[str, float]  # every thread and Postgres process, the same span


def end_to_end(loaded: Loaded, round_: int, n: int) -> DaemonRound:
    """The daemon from slot `cdc<round_>` into fresh targets until both hold the `n`
    changes; then stopped (it acknowledges) and its targets compared with the source."""
    dsn = loaded.cluster.paths.dsn
    settings = {
        "source_dsn": dsn,
        "clickhouse_url": f"chdb://{loaded.root / f'clickhouse_{round_}'}",
        "slot": f"cdc{round_}",
        "publication": "cdc",
        "historic_schema": f"historic_{round_}",
        "status_interval_s": 10.0,
        "initial_load": False,
    }
    postmaster = cpu.postmaster_pid(loaded.cluster.paths.data)
    before = cpu.postgres_processes(postmaster)
    log = (loaded.root / f"daemon_{round_}.log").open("w")
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(DAEMON_SCRIPT), json.dumps(settings), str(n)],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=DAEMON_SCRIPT.resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(DAEMON_SCRIPT.resolve().parents[1])},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        imported = _next_event(process.stdout, "imported")["at"]
        first = _next_event(process.stdout, "first_change")["at"]
        started = _daemon_threads(process.pid), cpu.postgres_processes(postmaster)
        done = _next_event(process.stdout, "done")
        ended = _daemon_threads(process.pid), cpu.postgres_processes(postmaster)
        process.send_signal(signal.SIGTERM)
        stopped = _next_event(process.stdout, "stopped")
        assert process.wait(60) == 0, process.returncode
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert done["changes"] == n, (done, n)
    assert tuple(stopped["clickhouse"]) == loaded.fingerprint, (stopped, loaded.fingerprint)
    with psycopg.connect(dsn, autocommit=True) as conn:
        historic = conn.execute(FINGERPRINT.format(f"historic_{round_}", "_current")).fetchone()
        flushed = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (f"cdc{round_}",),
        ).fetchone()
    assert historic is not None and tuple(int(v or 0) for v in historic) == loaded.fingerprint
    assert flushed is not None and Lsn.parse(flushed[0]) >= Lsn.parse(stopped["applied_lsn"])
    names = {int(tid): name for tid, name in done["threads"].items()}
    detail = _daemon_detail(started[0], ended[0], names)
    detail.update(_postgres_detail(started[1], ended[1]))
    startup = started[0][PROCESS].ticks / cpu.TICKS_PER_S
    startup += sum(cpu.used_seconds(_ticks(before), _ticks(started[1])).values())
    return DaemonRound(
        total_s=done["at"] - start,
        startup_s=first - start,
        imported_s=imported - start,
        startup_cpu_s=startup,
        cpu_s=_components(detail),
        cpu_detail_s=detail,
    )


def _next_event(lines: IO[str], name: str) -> dict[str, Any]:
    for line in lines:
        event: dict[str, Any] = json.loads(line)
        if event["event"] == name:
            return event
    raise RuntimeError(f"the daemon's process ended before {name!r} (see its log)")


def _daemon_threads(pid: int) -> dict[int, cpu.Stat]:
    """Each thread of the daemon's process; under PROCESS, the process itself (its ticks
    include those of the threads that ended)."""
    found = cpu.threads(pid)
    found[PROCESS] = cpu.parse_stat(Path(f"/proc/{pid}/stat").read_text())
    return found


def _ticks(processes: dict[int, tuple[str, int]]) -> dict[int, int]:
    return {pid: ticks for pid, (_, ticks) in processes.items()}


def _daemon_detail(
    before: dict[int, cpu.Stat], after: dict[int, cpu.Stat], names: dict[int, str]
) -> dict[str, float]:
    """CPU seconds per thread of the daemon's process between two readings: Python
    threads by name, the engine's by the name it gives them (all of one name summed); what
    threads that ended in between used, apart."""
    used = cpu.used_seconds(
        {tid: stat.ticks for tid, stat in before.items()},
        {tid: stat.ticks for tid, stat in after.items()},
    )
    detail: dict[str, float] = {}
    for tid, seconds in used.items():
        if tid == PROCESS:
            continue
        name = names.get(tid)
        key = f"daemon thread {name}" if name else f"engine thread {after[tid].comm}"
        detail[key] = detail.get(key, 0.0) + seconds
    detail[ENDED] = used[PROCESS] - sum(s for tid, s in used.items() if tid != PROCESS)
    return detail


def _postgres_detail(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]
) -> dict[str, float]:
    """CPU seconds per Postgres process between two readings, by role; client backends
    numbered from the busiest (so rounds line up)."""
    used = cpu.used_seconds(_ticks(before), _ticks(after))
    detail: dict[str, float] = {}
    backends = sorted((s for pid, s in used.items() if after[pid][0] == "backend"), reverse=True)
    for rank, seconds in enumerate(backends, 1):
        detail[f"postgres backend #{rank}"] = seconds
    for pid, seconds in used.items():
        role = after[pid][0]
        if role != "backend":
            detail[f"postgres {role}"] = detail.get(f"postgres {role}", 0.0) + seconds
    return detail


def _components(detail: dict[str, float]) -> dict[str, float]:
    """The detail summed into the components of the CPU table, in COMPONENTS' order."""
    totals = dict.fromkeys(COMPONENTS, 0.0)
    for key, seconds in detail.items():
        if key.startswith("daemon thread "):
            name = key.removeprefix("daemon thread ")
            component = THREAD_ROLES.get(name)
            if component is None:
                component = HISTORIC_WRITERS if name.startswith("cdc-historic") else OTHER
        elif key.startswith("engine thread "):
            component = ENGINE_ROLES.get(key.removeprefix("engine thread "), ENGINE_OTHER)
        elif key.startswith("postgres walsender"):
            component = WALSENDER
        elif key.startswith("postgres backend"):
            component = BACKENDS
        elif key.startswith("postgres "):
            component = BACKGROUND
        else:
            component = key
        totals[component] += seconds
    return totals


def compile_daemon() -> None:
    """Byte-compile the daemon's modules (into their `__pycache__`), as `pip install`
    leaves an installed package: the start-up a user sees does not compile them (here
    PYTHONDONTWRITEBYTECODE may be set, and then every start would)."""
    package = DAEMON_SCRIPT.resolve().parents[1] / "cdc"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def measure(n: int, workload: Workload = workloads.FRIENDLY, rounds_: int = 3) -> dict[str, Any]:
    """The three measurements on copies of one slot holding `n` changes of `workload`: (b)
    once, (a) and (c) `rounds_` times, alternately, (c) into fresh targets each time."""
    compile_daemon()
    with loaded_slot(n, workload) as loaded:
        dsn = loaded.cluster.paths.dsn
        copies = ["decode", *(f"{kind}{i}" for i in range(rounds_) for kind in ("recv", "cdc"))]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for copy in copies:
                conn.execute("SELECT pg_copy_logical_replication_slot('base', %s)", (copy,))
        decoding = timed("(b) decode + assemble", decode_only, dsn, "decode", loaded.end, n)
        measured: list[rounds.Round] = []
        cpu_rounds: list[dict[str, float]] = []
        details: list[dict[str, float]] = []
        startups: list[dict[str, float]] = []
        loads: list[str] = []
        for i in range(rounds_):
            loads.append(load_average())
            baseline, walsender = recvlogical(loaded, f"recv{i}")
            daemon = end_to_end(loaded, i, n)
            measured.append(rounds.Round(baseline, daemon.total_s, daemon.startup_s))
            cpu_rounds.append({**daemon.cpu_s, BASELINE_WALSENDER: walsender})
            details.append(daemon.cpu_detail_s)
            startups.append({"imports_s": daemon.imported_s, "cpu_s": daemon.startup_cpu_s})
            print(f"  round {i + 1} (load {loads[-1]}): (a) {baseline:.2f} s, (c) "
                  f"{daemon.total_s:.2f} s of which start-up {daemon.startup_s:.2f} s "
                  f"(imports {daemon.imported_s:.2f} s)", flush=True)  # fmt: skip
    summary = rounds.summarise(n, measured)
    for row, load in zip(summary["every_round"], loads, strict=True):
        row["load_average"] = load
    return {
        "workload": workload.name,
        "description": workload.describe(n),
        **summary,
        "decode_changes_per_s": round(n / decoding),
        "startup_detail": rounds.median_per_key(startups),
        "cpu_us_per_change": rounds.median_per_key(
            [rounds.per_change_us(c, n) for c in cpu_rounds]
        ),
        "cpu_detail_us_per_change": rounds.median_per_key(
            [rounds.per_change_us(d, n) for d in details]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("changes", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--workload", choices=sorted(workloads.WORKLOADS), default="realistic")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workload = workloads.WORKLOADS[args.workload]
    print(json.dumps(measure(args.changes, workload, args.rounds), indent=2))


if __name__ == "__main__":
    main()
