"""The historic sink's statements on the realistic workload, as Postgres ran them.

Writes the realistic workload (`bench/workloads.py`), turns on `auto_explain` (with
ANALYZE and BUFFERS) for new sessions, runs the daemon until it applied every change, and
prints, for each kind of statement the historic sink ran on a historic table, the slowest
run's plan with its actual times, and how many runs and milliseconds that kind took in
all. Timing every plan node slows the statements down: read the plans for their shape
and the share of each node, not for throughput.

Usage: python bench/explain.py [changes]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import psycopg
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import streaming, workloads
from cdc.apply.daemon import Daemon
from cdc.ops.settings import Settings

AUTO_EXPLAIN = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_buffers": "on",
}
# One auto_explain entry: "duration: <ms> ms  plan:" then the query and its plan, up to
# the next log line.
ENTRY = re.compile(
    r"duration: (?P<ms>[\d.]+) ms  plan:\n(?P<body>.*?)(?=\n\S|\Z)", re.DOTALL | re.MULTILINE
)


def statement_kind(query: str) -> str:
    """A statement's first words, enough to tell the sink's statements apart."""
    words = re.sub(r"\s+", " ", query).strip().split(" ")
    return " ".join(words[:4])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("changes", type=int, nargs="?", default=100_000)
    n = parser.parse_args().changes
    with streaming.loaded_slot(n, workloads.REALISTIC) as loaded:
        dsn = loaded.cluster.paths.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("LOAD 'auto_explain'")  # so that its settings are known
            for name, value in AUTO_EXPLAIN.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
        settings = Settings(
            source_dsn=SecretStr(dsn),
            clickhouse_url=SecretStr(f"chdb://{loaded.root / 'clickhouse'}"),
            slot="base",
            publication="cdc",
            status_interval_s=10.0,
            initial_load=False,
        )
        streaming.run_until(Daemon(settings), n)
        log = loaded.cluster.paths.log.read_text()
    kinds: dict[str, list[tuple[float, str]]] = {}
    for match in ENTRY.finditer(log):
        body = match["body"]
        query = body.split("Query Text:", 1)[-1].split("\n", 1)[0]
        if "historic" not in query:
            continue
        kinds.setdefault(statement_kind(query), []).append((float(match["ms"]), body))
    for kind, runs in sorted(kinds.items(), key=lambda item: -sum(ms for ms, _ in item[1])):
        slowest_ms, plan = max(runs)
        total = sum(ms for ms, _ in runs)
        print(f"== {kind}: {len(runs)} runs, {total:.0f} ms in all; the slowest, "
              f"{slowest_ms:.1f} ms:\n{plan}\n")  # fmt: skip


if __name__ == "__main__":
    main()
