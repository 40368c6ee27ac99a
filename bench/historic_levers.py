"""Two levers for the historic sink's writes, measured on the server alone.

A historic table of `--rows` rows of the streaming benchmarks' 10-column table (a 2 KB
text on every tenth), made by the historic sink itself; then, in rounds that are rolled
back, a batch of `--batch` updated rows of random keys:

(1) staged as the daemon stages them (`stage_sql`), by COPY in text or in binary (what
    the daemon sends where the table's types allow, `cdc.load.copybinary`);
(2) applied from the stage by the daemon's version-guarded upsert (`upsert_sql`) or by
    the `MERGE` Postgres 15 offers instead, on a session set up as the sink's writers are.

Prints the median µs of statement time per row of each, and every round.

Usage: python bench/historic_levers.py [--rows N] [--batch B] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import workloads
from bench.run import cluster
from cdc.describe import describe_table
from cdc.schema import TableSchema
from cdc.sinks.historic.sink import HistoricSink
from cdc.sinks.historic.sql import (
    KEY_PROBES_SQL,
    SESSION_SQL,
    copy_sql,
    row_columns,
    stage_sql,
    upsert_sql,
)

SCHEMA = "historic"
STAGE = "_cdc_stage"  # made in each round's transaction, which is rolled back
ROWS = """
INSERT INTO director.events
SELECT g, 'name-' || g, timestamptz '2024-01-01' + g * interval '1 second', (g % 100000) / 7.0,
       jsonb_build_object('k', g, 'v', 'x' || g), g % 2 = 0, md5(g::text)::uuid, g % 1000,
       g / 3.0, CASE WHEN g % 10 = 0 THEN repeat(md5(g::text), 64) ELSE 'note ' || g END
FROM generate_series(1, {rows}) g
"""
HISTORIC_ROWS = """
INSERT INTO historic.events
SELECT e.*, e.id::numeric * 18446744073709551616, false, now() FROM director.events e
"""
# The batch: rows of random keys with one column changed, each newer than its historic row.
BATCH = """
SELECT e.id, e.name, e.at, e.amount, e.doc, e.active, e.ref, e.qty + 1 AS qty, e.ratio,
       e.note, e.id::numeric * 18446744073709551616 + 1 AS _version, false AS _is_deleted,
       now() AS _commit_time
FROM director.events e WHERE e.id IN (SELECT (random() * {rows})::bigint + 1
                                      FROM generate_series(1, {batch})) ORDER BY random()
"""


def merge_sql(layout: TableSchema) -> sql.Composed:
    """The stage applied by `MERGE`, with the upsert's version guard."""
    columns = row_columns(layout)
    key = layout.target_key
    updates = [c for c in columns if c not in key]
    return sql.SQL(
        "MERGE INTO {schema}.{table} AS t USING (SELECT * FROM {stage} ORDER BY {order}) AS s "
        "ON {match} WHEN MATCHED AND t._version < s._version THEN UPDATE SET {sets} "
        "WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
    ).format(
        schema=sql.Identifier(SCHEMA),
        table=sql.Identifier(layout.name),
        stage=sql.Identifier(STAGE),
        order=sql.SQL(", ").join(map(sql.Identifier, key)),
        match=sql.SQL(" AND ").join(
            sql.SQL("t.{0} = s.{0}").format(sql.Identifier(k)) for k in key
        ),
        sets=sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(sql.Identifier(c)) for c in updates),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns),
    )


def batch_copies(conn: psycopg.Connection[Any], rows: int, batch: int) -> dict[str, bytes]:
    """The batch as COPY text and as COPY binary (made by the server: the same rows)."""
    conn.execute(f"CREATE TEMP TABLE batch AS {BATCH.format(rows=rows, batch=batch)}")
    copies = {}
    for fmt in ("text", "binary"):
        out = bytearray()
        with conn.cursor().copy(f"COPY batch TO STDOUT (FORMAT {fmt})") as copy:
            for data in copy:
                out += data
        copies[fmt] = bytes(out)
    return copies


def one_round(
    conn: psycopg.Connection[Any], layout: TableSchema, copies: dict[str, bytes], apply: str
) -> dict[str, float]:
    """Seconds of each COPY into a fresh stage, then of `apply` from the text one."""
    seconds = {}
    columns = row_columns(layout)
    stage = sql.Identifier(STAGE)
    for fmt in ("text", "binary") if apply == "upsert" else ("binary", "text"):
        with conn.transaction(force_rollback=True):
            for statement in stage_sql(SCHEMA, layout, STAGE):
                conn.execute(statement)
            copy = copy_sql(stage, columns)
            if fmt == "binary":
                copy = sql.SQL("{} (FORMAT binary)").format(copy)
            start = time.perf_counter()
            with conn.cursor().copy(copy) as pipe:
                pipe.write(copies[fmt])
            seconds[f"COPY {fmt} into the stage"] = time.perf_counter() - start
            if fmt == "text":
                upsert = apply == "upsert"
                statement = upsert_sql(SCHEMA, layout, STAGE) if upsert else merge_sql(layout)
                start = time.perf_counter()
                conn.execute(statement)
                seconds[apply] = time.perf_counter() - start
    return seconds


def measure(rows: int, batch: int, rounds: int) -> dict[str, Any]:
    with cluster() as (pg, _):
        dsn = pg.paths.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(workloads.TABLE)
            conn.execute(ROWS.format(rows=rows))
            layout = describe_table(conn, "director", "events")
        sink = HistoricSink(dsn, SCHEMA)
        sink.prepare([layout])
        sink.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(HISTORIC_ROWS)
            conn.execute("VACUUM ANALYZE historic.events")
        with psycopg.connect(dsn) as conn:
            for statement in (SESSION_SQL, *KEY_PROBES_SQL):
                conn.execute(statement)
            copies = batch_copies(conn, rows, batch)
            staged = conn.execute("SELECT count(*) FROM batch").fetchone()
            assert staged is not None
            every: dict[str, list[float]] = {}
            for r in range(rounds):  # the upsert first in even rounds, MERGE in odd ones
                for apply in ("upsert", "merge") if r % 2 == 0 else ("merge", "upsert"):
                    for name, spent in one_round(conn, layout, copies, apply).items():
                        every.setdefault(name, []).append(spent)
    per_row = 1e6 / staged[0]
    return {
        "historic_rows": rows,
        "batch_rows": staged[0],
        "us_per_row_median": {k: round(median(v) * per_row, 2) for k, v in every.items()},
        "us_per_row_rounds": {k: [round(s * per_row, 2) for s in v] for k, v in every.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(json.dumps(measure(args.rows, args.batch, args.rounds), indent=2))


if __name__ == "__main__":
    main()
