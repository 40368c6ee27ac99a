"""The model-based oracle: a seeded random workload on a real Postgres while the real daemon
runs (killed with SIGKILL at random fault points and random moments, then restarted),
after which every column of every row of historic and ClickHouse must equal the source,
and both targets must hold the same `_version` for every key.

`tests/model.py` draws the workload. Each run also draws the pipeline's settings: batch
size (1 to 20,000), batch latency, historic writers (1 to 4), a memory budget small enough
to spill, and the replica identity of the table whose rows move between keys.

CI runs a slice: a few fixed seeds and one random seed (printed). `CDC_MODEL_SEED=<n>`
runs that seed alone (a failure prints it, with the settings, the first differing rows and
the workload log); `CDC_MODEL_SECONDS` sets how long each seed writes (default 12).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc.protocol.lsn import Lsn
from cdc.schema import TRUNCATIONS_TABLE
from tests import model
from tests.harness import ClickHouseServer, PgServer
from tests.pipeline import wait_until
from tests.processes import ROOT, daemon_env, start_daemon, wait_for_slot

FIXED_SEEDS = [1, 2, 3]
SECONDS = float(os.environ.get("CDC_MODEL_SECONDS", "12"))
# Fault points, and the last hit of each a kill is drawn at (the rarer a point, the lower).
# A daemon lives 1.5 to 5 s: a kill drawn at a later hit would mostly not come.
FAULT_POINTS = {
    "before_historic": 8, "after_historic": 8, "before_clickhouse": 8, "after_clickhouse": 8,
    "before_ack": 8, "after_ack": 8, "mid_backfill_chunk": 4, "mid_backfill_plan": 3,
    "before_table_load": 2, "after_slot_created": 1,
}  # fmt: skip
WRITERS = 4


def _seeds() -> list[int]:
    if chosen := os.environ.get("CDC_MODEL_SEED"):
        return [int(chosen)]
    return [*FIXED_SEEDS, random.SystemRandom().randrange(1_000, 1_000_000)]


def draw_settings(rng: random.Random) -> dict[str, str]:
    return {
        "CDC_BATCH_SIZE": str(int(math.exp(rng.uniform(0, math.log(20_000))))),
        "CDC_BATCH_LATENCY_MS": str(rng.choice([1, 5, 20, 100, 300])),
        "CDC_HISTORIC_WRITERS": str(rng.randint(1, 4)),
        "CDC_MEMORY_BUDGET_MB": str(rng.choice([1, 2, 64])),
        "CDC_BACKFILL_CHUNK_SIZE": str(rng.choice([7, 50, 10_000])),
        "CDC_BACKFILL_WORKERS": str(rng.randint(1, 2)),
        "CDC_MAX_RETRY_DELAY_S": "0.3",
        "CDC_HEARTBEAT_INTERVAL_S": "1",
        # The drift monitor checks all along (it must never call the mix drift).
        "CDC_MONITOR_INTERVAL_S": "1",
        "CDC_MONITOR_ROWS_PER_S": "20000",
    }


READ_CLICKHOUSE = """
import json, sys
from cdc.sinks.clickhouse import client as clickhouse
client = clickhouse.connect(sys.argv[1])
out = {}
for name, query in json.loads(sys.argv[2]).items():
    out[name] = [list(r) for r in client.query(query).result_rows]
print(json.dumps(out))
client.close()
"""


def q(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def ch_queries(database: str) -> dict[str, str]:
    """Per table: the live rows' canonical text, and every key's newest version above the
    truncate watermark (tombstones included); and the watermarks."""
    queries = {}
    db = q(database)
    for table in model.TABLES:
        columns = ", ".join(c.ch.replace("{c}", q(c.name)) for c in table.columns)
        queries[f"rows {table.name}"] = f"SELECT {columns} FROM {db}.{q(table.name + '_current')}"
        keys = ", ".join(c.ch.replace("{c}", q(c.name)) for c in model.key_columns(table))
        # An append-only log's rows are keyed by `_version` alone.
        keys, grouped = (
            (f"{keys}, ", ", ".join(q(k) for k in table.key)) if keys else ("", "_version")
        )
        watermark = (
            f"(SELECT max(version) FROM {db}.{q(TRUNCATIONS_TABLE)} FINAL "
            f"WHERE table_name = '{table.name}')"
        )
        queries[f"versions {table.name}"] = (
            f"SELECT {keys}toString(max(_version)) FROM {db}.{q(table.name)} "
            f"GROUP BY {grouped} HAVING max(_version) > ifNull({watermark}, 0)"
        )
    queries["watermarks"] = (
        f"SELECT table_name, toString(max(version)) FROM {db}.{q(TRUNCATIONS_TABLE)} "
        "GROUP BY table_name"
    )
    return queries


def read_clickhouse(url: str, database: str) -> dict[str, list[list[Any]]]:
    out = subprocess.run(
        [sys.executable, "-c", READ_CLICKHOUSE, url, json.dumps(ch_queries(database))],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, f"reading ClickHouse failed:\n{out.stderr[-3000:]}"
    result: dict[str, list[list[Any]]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def pg_state(conn: psycopg.Connection[Any], schema: str, live_suffix: str) -> dict[str, Any]:
    """The same as `ch_queries` from Postgres (`schema` director: live rows only)."""
    state: dict[str, Any] = {}
    for table in model.TABLES:
        relation = sql.Identifier(schema, table.name + live_suffix)
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {}").format(model.pg_exprs(table.columns), relation)
        ).fetchall()
        state[f"rows {table.name}"] = rows
        if schema == "director":
            continue
        keys = model.pg_exprs(model.key_columns(table))
        state[f"versions {table.name}"] = conn.execute(
            sql.SQL(
                "SELECT {keys}_version::text FROM {table} WHERE _version > coalesce("
                "(SELECT version FROM {truncations} WHERE table_name = {name}), 0)"
            ).format(
                keys=sql.SQL("{}, ").format(keys) if table.key else sql.SQL(""),
                table=sql.Identifier(schema, table.name),
                truncations=sql.Identifier(schema, TRUNCATIONS_TABLE),
                name=sql.Literal(table.name),
            )
        ).fetchall()
    if schema != "director":
        state["watermarks"] = conn.execute(
            sql.SQL("SELECT table_name, version::text FROM {}").format(
                sql.Identifier(schema, TRUNCATIONS_TABLE)
            )
        ).fetchall()
    return state


def _canonical(rows: list[Any]) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in rows), key=repr)


def differences(want: list[Any], got: list[Any], limit: int = 5) -> str:
    """The first rows only one side has."""
    want_set, got_set = set(_canonical(want)), set(_canonical(got))
    missing = sorted(want_set - got_set, key=repr)[:limit]
    extra = sorted(got_set - want_set, key=repr)[:limit]
    short = [
        [tuple(str(v)[:40] if v is not None else None for v in row) for row in side]
        for side in (missing, extra)
    ]
    return f"only in the expected: {short[0]}\n    only in the target: {short[1]}"


def compare(source: dict[str, Any], historic: dict[str, Any], ch: dict[str, Any]) -> list[str]:
    problems = []
    for table in model.TABLES:
        rows = f"rows {table.name}"
        for target, state in (("historic", historic), ("ClickHouse", ch)):
            if _canonical(state[rows]) != _canonical(source[rows]):
                problems.append(
                    f"{target} {table.name!r} differs from the source:\n    "
                    + differences(source[rows], state[rows])
                )
        versions = f"versions {table.name}"
        if _canonical(historic[versions]) != _canonical(ch[versions]):
            problems.append(
                f"_version of {table.name!r} differs between historic and ClickHouse:\n    "
                + differences(historic[versions], ch[versions])
            )
    if _canonical(historic["watermarks"]) != _canonical(ch["watermarks"]):
        problems.append(f"truncate watermarks differ: {historic['watermarks']} {ch['watermarks']}")
    return problems


def errors(log: Path) -> list[str]:
    """The daemon log's error and warning lines (the last 20)."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if '"level": "error"' in line or "Traceback" in line][-20:]


def check_monitor(log: Path, context: str) -> None:
    """The drift monitor ended a pass, and never reported drift."""
    drift = [line for line in log.read_text(errors="replace").splitlines()
             if '"drift_detected"' in line]  # fmt: skip
    assert not drift, "\n".join([context, "the monitor reported drift:", *drift[:10]])
    assert monitor_passes(log) > 0, "\n".join([context, "no monitor pass ended"])


def slot_created_at(log: Path) -> int:
    """The LSN the daemon's slot was (last) created at, from its log; 0 if it never was."""
    lsns = [json.loads(line)["lsn"] for line in log.read_text(errors="replace").splitlines()
            if '"slot_created"' in line]  # fmt: skip
    return int(Lsn.parse(lsns[-1])) if lsns else 0


def monitor_passes(log: Path) -> int:
    return log.read_text(errors="replace").count('"monitor_pass_done"')


LONG_VALUE = re.compile(r"'([0-9a-f]{200,})'")


def write_changes(conn: psycopg.Connection[Any], slot: str, path: Path) -> None:
    """Every change since the start, one line each, with its LSN; long values as their md5
    (what the comparison prints)."""

    def short(match: re.Match[str]) -> str:
        return f"'md5:{hashlib.md5(match.group(1).encode()).hexdigest()}'"

    with path.open("w") as out:
        for lsn, xid, data in conn.execute(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, NULL, "
            "NULL, 'include-xids', '1', 'skip-empty-xacts', '1')",
            (slot,),
        ):
            out.write(f"{lsn} {xid} {LONG_VALUE.sub(short, data)}\n")


class DaemonRounds:
    """Starts the daemon again and again, each time killed at a random fault point or a
    random moment, until told to stop."""

    def __init__(self, env: dict[str, str], log: Path, rng: random.Random) -> None:
        self.env, self.log, self.rng = env, log, rng
        self.kills = 0
        self.fault_kills = 0

    def run(self, until: float) -> None:
        while time.monotonic() < until:
            faults = ""
            if self.rng.random() < 0.6:
                point = self.rng.choice(sorted(FAULT_POINTS))
                faults = f"{point}=kill@{self.rng.randint(1, FAULT_POINTS[point])}"
            daemon = start_daemon(self.env, self.log, faults)
            deadline = time.monotonic() + self.rng.uniform(1.5, 5.0)
            while daemon.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGKILL)
            code = daemon.wait(timeout=60)
            assert code == -signal.SIGKILL, (
                f"the daemon exited with {code} (faults {faults!r}):\n"
                + "\n".join(errors(self.log))
            )
            self.kills += 1
            if time.monotonic() < deadline - 0.05:
                self.fault_kills += 1


def _prepare_source(pg: psycopg.Connection[Any], seed: int, identity: str) -> str:
    """The model's tables and first rows; returns the name of a `test_decoding` slot that
    records Postgres' own account of every change, for the report of a failure."""
    pg.execute(model.SCHEMA)
    for statement in model.IDENTITIES[identity]:
        pg.execute(statement)
    # The walsender reads it at connection: transactions of a few rows are streamed.
    pg.execute(sql.SQL("ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'").format(
        sql.Identifier(pg.info.dbname)))  # fmt: skip
    oracle = f"model_{seed}_oracle"
    pg.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (oracle,))
    model.Workload(seed).seed_rows(pg)
    return oracle


def _write_concurrently(
    pg_dsn: str, seed: int, logs: list[Path], rounds: DaemonRounds
) -> tuple[list[model.WriterStats], int]:
    """The writers' workload and the migrations (`model.MIGRATIONS`), while the daemon goes
    through `rounds` for `SECONDS`; returns the writers' stats and the migrations made."""
    stop = threading.Event()
    stats = [model.WriterStats() for _ in logs]
    migrated: list[int] = []
    threads = [
        threading.Thread(
            target=model.run_writer,
            args=(pg_dsn, seed * 100 + w, stop, log, stats[w]),
            name=f"model-writer-{w}",
        )
        for w, log in enumerate(logs)
    ]
    log = logs[0].with_name("migrations.jsonl")
    threads.append(threading.Thread(
        target=lambda: migrated.append(model.run_migrations(pg_dsn, seed, SECONDS, stop, log)),
        name="model-migrations",
    ))  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        rounds.run(time.monotonic() + SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return stats, sum(migrated)


def copies_due(pg: psycopg.Connection[Any]) -> int:
    """Tables whose copy the schema follower queued and did not end."""
    row = pg.execute(
        "SELECT count(*) FROM historic._cdc_tables WHERE state IN ('copying', 'replacing')"
    ).fetchone()
    return int(row[0]) if row else 0


def slot_streamed(pg: psycopg.Connection[Any], slot: str, wait: bool) -> tuple[int, int] | None:
    """(stream_txns, spill_txns) of the slot; `wait`: for up to 10 s until some transaction
    was streamed (a walsender reports its counts when it ends, after the daemon did)."""
    deadline = time.monotonic() + (10 if wait else 0)
    while True:
        pg.execute("SELECT pg_stat_clear_snapshot()")
        row = pg.execute(
            "SELECT stream_txns, spill_txns FROM pg_stat_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
        if (row is not None and row[0] > 0) or time.monotonic() > deadline:
            return None if row is None else (row[0], row[1])
        time.sleep(0.2)


def column_types(pg: psycopg.Connection[Any], schema: str, suffix: str) -> dict[str, str]:
    """`table.column` -> its type, for the model's tables in `schema` (their `suffix`ed
    relations: historic's `_current` views)."""
    rows = pg.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "AND c.relname = ANY(%s)",
        (schema, [t.name + suffix for t in model.TABLES]),
    ).fetchall()
    return {f"{t.removesuffix(suffix)}.{c}": type_ for t, c, type_ in rows if not c.startswith("_")}


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds())
def test_model(
    seed: int,
    pg_server: PgServer,
    pg_dsn: str,
    pg: psycopg.Connection[Any],
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(seed)
    settings = draw_settings(rng)
    identity = rng.choice(list(model.IDENTITIES))
    oracle = _prepare_source(pg, seed, identity)
    slot = f"model_{seed}"
    env, ch_url = daemon_env(pg_dsn, clickhouse_server, ch_database, tmp_path, slot, **settings)
    daemon_log = tmp_path / "daemon.log"
    workload_logs = [tmp_path / f"workload-{w}.jsonl" for w in range(WRITERS)]
    context = (
        f"seed {seed} (replay: CDC_MODEL_SEED={seed}), order_lines identity {identity!r}, "
        f"settings {settings}; workload logs {tmp_path}/workload-*.jsonl, daemon log {daemon_log}"
    )
    print(context)

    rounds = DaemonRounds(env, daemon_log, rng)
    stats, migrated = _write_concurrently(pg_dsn, seed, workload_logs, rounds)

    # Catch up with everything (a change made after the start: the daemon took its first
    # look at the schema before it acknowledges it), let the copies the schema follower
    # queued end, then stop cleanly and compare.
    daemon = start_daemon(env, daemon_log)
    try:
        row = pg.execute("SELECT pg_logical_emit_message(true, 'model', 'end')::text").fetchone()
        assert row is not None
        wait_for_slot(pg, slot, Lsn.parse(row[0]), daemon)
        assert daemon.poll() is None, "daemon died:\n" + "\n".join([*errors(daemon_log), context])
        wait_until(lambda: copies_due(pg) == 0, 120, "the schema follower's copies to end")
        # One more monitor pass over the caught-up targets.
        passes = monitor_passes(daemon_log)
        deadline = time.monotonic() + 60
        while monitor_passes(daemon_log) <= passes and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    committed = sum(s.committed for s in stats)
    big = sum(s.big for s in stats)
    # A large transaction that committed after the slot was made went through the stream
    # (the slot's creation may wait out the writers: the migrations race it).
    big_streamed = max(s.last_big_lsn for s in stats) > slot_created_at(daemon_log)
    streamed = slot_streamed(pg, slot, wait=big_streamed)
    print(
        f"{committed} transactions committed ({big} large), "
        f"{sum(s.rolled_back for s in stats)} rolled back, "
        f"{sum(s.retried for s in stats)} retried, {sum(s.skipped_ops for s in stats)} "
        f"operations refused; {rounds.kills} kills ({rounds.fault_kills} at fault points); "
        f"streamed/spilled transactions {streamed}; {monitor_passes(daemon_log)} monitor passes; "
        f"{migrated} of {len(model.MIGRATIONS)} migrations"
    )
    assert migrated == len(model.MIGRATIONS), "\n".join([context, "not every migration was made"])
    source = pg_state(pg, "director", "")
    historic = pg_state(pg, "historic", "_current")
    ch = read_clickhouse(ch_url, ch_database)
    problems = compare(source, historic, ch)
    if problems:
        changes = tmp_path / "changes.txt"
        write_changes(pg, oracle, changes)
        problems.append(f"every change, as test_decoding decoded it: {changes}")
    assert not problems, "\n".join([context, *problems])
    assert committed > 0 and rounds.kills > 0
    source_types = column_types(pg, "director", "")
    held_types = column_types(pg, "historic", "_current")  # and columns renamed away
    assert {c: held_types.get(c) for c in source_types} == source_types, "\n".join(
        [context, "historic's column types differ from the source's"])  # fmt: skip
    check_monitor(daemon_log, context)
    if big_streamed:  # streamed, or spilled where Postgres may not stream it (a replay)
        assert streamed is not None and sum(streamed) > 0, "no transaction was streamed"
