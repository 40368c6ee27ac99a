"""Streaming throughput against the receive limit, all in one run on one slot's copies.

(a) `pg_recvlogical` to /dev/null: what the walsender can deliver (the baseline);
(b) this project's change source: decode and assemble every transaction;
(c) the daemon end to end: into the historic schema and ClickHouse.
Every figure is reported with its ratio to (a); (a) and (c) are measured in several
rounds and the median round is reported. Usage: python bench/streaming.py [changes]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from cdc import clickhouse, localstack
from cdc.changes import Transaction
from cdc.daemon import Daemon
from cdc.lsn import Lsn
from cdc.settings import Settings
from cdc.source import ChangeSource, SourceConfig

TABLE = """
CREATE SCHEMA director;
CREATE TABLE director.events (
    id bigint PRIMARY KEY, name text, at timestamptz, amount numeric(14,4), doc jsonb,
    active bool, ref uuid, qty int, ratio float8, note text)
"""
WORKLOAD = """
CREATE PROCEDURE director.load(n int) LANGUAGE plpgsql AS $$
DECLARE i int := 0;
BEGIN
  -- 60% inserts, 30% updates, 10% deletes, 1,000 changes per transaction
  WHILE i < n * 6 / 10 LOOP
    INSERT INTO director.events
    SELECT g, 'name ' || g, now() - g * interval '1 second', g * 1.25,
           jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b')),
           g % 2 = 0, gen_random_uuid(), g % 1000, g / 3.0, repeat('x', 20)
    FROM generate_series(i + 1, i + 1000) g;
    i := i + 1000; COMMIT;
  END LOOP;
  i := 0;
  WHILE i < n * 3 / 10 LOOP
    UPDATE director.events SET amount = amount + 1, note = 'updated', active = NOT active
    WHERE id > i AND id <= i + 1000;
    i := i + 1000; COMMIT;
  END LOOP;
  i := 0;
  WHILE i < n / 10 LOOP
    DELETE FROM director.events WHERE id > n * 6 / 10 - i - 1000 AND id <= n * 6 / 10 - i;
    i := i + 1000; COMMIT;
  END LOOP;
END $$
"""


def timed(label: str, fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - start
    print(f"  {label}: {elapsed:.2f} s", flush=True)
    return elapsed


def recvlogical(cluster: localstack.LocalCluster, dsn: str, slot: str, end: Lsn) -> None:
    subprocess.run(
        [str(cluster.bindir / "pg_recvlogical"), "-d", dsn, "--slot", slot, "--start",
         "--endpos", str(end), "-o", "proto_version=1", "-o", "publication_names=bench",
         "-f", "/dev/null", "--no-loop"],
        check=True,
    )  # fmt: skip


def decode_only(dsn: str, slot: str, end: Lsn, expected: int) -> None:
    changes = 0
    with ChangeSource(SourceConfig(dsn, slot, "bench", streaming=False)) as source:
        source.start()
        for event in source.events(2.0):
            if isinstance(event, Transaction):
                changes += sum(1 for _ in event.changes())
                event.close()
                source.acknowledge(event.end_lsn)
                if event.end_lsn >= end:
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


@contextmanager
def loaded_slot(n: int) -> Iterator[tuple[localstack.LocalCluster, Path, Lsn]]:
    """A private cluster whose slot 'base' holds the workload's `n` changes (publications
    'bench' and 'cdc' publish its table): the cluster, its directory, the WAL end after."""
    root = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    root.chmod(0o755)
    cluster = localstack.LocalCluster(root / "pg", localstack.free_port())
    cluster.start()
    try:
        with psycopg.connect(cluster.paths.dsn, autocommit=True) as conn:
            conn.execute(TABLE)
            conn.execute(WORKLOAD)
            conn.execute("CREATE PUBLICATION bench FOR TABLE director.events")
            conn.execute("CREATE PUBLICATION cdc FOR TABLE director.events")
            conn.execute("SELECT pg_create_logical_replication_slot('base', 'pgoutput')")
            conn.execute("CALL director.load(%s)", (n,))
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
        yield cluster, root, Lsn.parse(row[0])
    finally:
        cluster.destroy()


def measure(n: int, rounds: int = 3) -> dict[str, Any]:
    """The three measurements on copies of one slot holding `n` changes: (b) once, (a) and
    (c) `rounds` times, alternately, (c) into fresh targets each time; the round with the
    median ratio is reported (this machine's speed drifts by ±10% within minutes)."""
    with loaded_slot(n) as (cluster, root, end):
        dsn = cluster.paths.dsn
        copies = ["decode", *(f"{kind}{i}" for i in range(rounds) for kind in ("recv", "cdc"))]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for copy in copies:
                conn.execute("SELECT pg_copy_logical_replication_slot('base', %s)", (copy,))
        decoding = timed("(b) decode + assemble", decode_only, dsn, "decode", end, n)
        pairs = [
            (
                timed(f"(a) pg_recvlogical, round {i + 1}", recvlogical, cluster, dsn,
                      f"recv{i}", end),
                timed(f"(c) end to end, round {i + 1}", end_to_end, dsn, root, i, n),
            )
            for i in range(rounds)
        ]  # fmt: skip
    pairs.sort(key=lambda pair: pair[0] / pair[1])
    base, end_to_end_s = pairs[len(pairs) // 2]
    seconds = {"pg_recvlogical": base, "decode": decoding, "end_to_end": end_to_end_s}
    return {
        "changes": n,
        "results": {
            name: {"seconds": round(s, 2), "changes_per_s": round(n / s),
                   "ratio_to_a": round(base / s, 3)}
            for name, s in seconds.items()
        },
        "end_to_end_ratios": [round(a / c, 3) for a, c in pairs],
    }  # fmt: skip


def end_to_end(dsn: str, root: Path, round_: int, n: int) -> None:
    """The daemon from slot `cdc<round_>` into fresh targets, until it applied `n` changes."""
    ch_path = root / f"clickhouse_{round_}"
    settings = Settings(
        source_dsn=SecretStr(dsn),
        clickhouse_url=SecretStr(f"chdb://{ch_path}"),
        slot=f"cdc{round_}",
        publication="cdc",
        historic_schema=f"historic_{round_}",
        status_interval_s=10.0,
        initial_load=False,
    )
    run_until(Daemon(settings), n)
    client = clickhouse.connect(f"chdb://{ch_path}")
    count = client.query("SELECT count() FROM analytics.events_current").result_rows[0][0]
    client.close()
    assert count == n * 6 // 10 - n // 10, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("changes", type=int, nargs="?", default=1_000_000)
    print(json.dumps(measure(parser.parse_args().changes), indent=2))


if __name__ == "__main__":
    main()
