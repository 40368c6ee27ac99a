"""What writing a wide value that does not compress costs Postgres, by how it is stored.

20,000 rows of a 2,048-character random hex text (as the realistic streaming workload's
wide rows) inserted with `INSERT ... SELECT` into a fresh table, best of 5 per case: the
default (pglz tries to compress it, fails, then stores it out of line), lz4 (the historic
sink's sessions), `STORAGE EXTERNAL` (out of line, no compression tried), and a table whose
rows stay inline up to a page (`toast_tuple_target = 8160`, the historic sink's stage).

Usage: python bench/toast.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import cluster

ROWS = 20_000
ROUNDS = 5
CASES = {
    "pglz (the default)": ("SET default_toast_compression = pglz", ""),
    "lz4": ("SET default_toast_compression = lz4", ""),
    "STORAGE EXTERNAL": ("ALTER TABLE t ALTER note SET STORAGE EXTERNAL", ""),
    "inline (toast_tuple_target = 8160)": ("", "WITH (toast_tuple_target = 8160)"),
}


def main() -> None:
    with cluster() as (pg, _), psycopg.connect(pg.paths.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE src AS SELECT g.g AS id, (SELECT string_agg(md5(random()::text "
            f"|| x || g.g), '') FROM generate_series(1, 64) x) AS note "
            f"FROM generate_series(1, {ROWS}) g(g)"
        )
        result = {}
        for name, (setup, options) in CASES.items():
            best = float("inf")
            for _ in range(ROUNDS):
                conn.execute("DROP TABLE IF EXISTS t")
                conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, note text) {options}")
                conn.execute(setup or "SELECT 1")
                started = time.perf_counter()
                conn.execute("INSERT INTO t SELECT * FROM src")
                best = min(best, time.perf_counter() - started)
            conn.execute("RESET default_toast_compression")
            result[name] = round(best / ROWS * 1e6, 2)
        print(json.dumps({"us_per_row": result}, indent=2))


if __name__ == "__main__":
    main()
