"""A backfill's plan: every `chunk_size`-th key of the rows it copies, in key order, found
by walking the primary key's index (composite keys and a `--where` filter included)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cdc.backfill import Backfill
from cdc.snapshot import exported_snapshot
from tests.harness import ClickHouseServer
from tests.pipeline import prepared_sinks

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("rows", "where"), [(2500, None), (2400, None), (2500, "a % 3 <> 0")])
def test_chunks_end_at_every_chunk_size_th_key_and_cover_every_row(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    rows: int,
    where: str | None,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (a int, b text, note text, PRIMARY KEY (a, b))")
    # Two rows per `a`, keys inserted out of order: the plan must follow the key, not the heap.
    pg.execute(
        "INSERT INTO director.t SELECT g / 2, 'k' || (g %% 2), 'n' || g "
        "FROM generate_series(%s, 0, -1) g",
        (rows - 1,),
    )
    expected = [
        [str(a), b]
        for a, b in pg.execute(
            f"SELECT a, b FROM director.t WHERE {where or 'true'} ORDER BY a, b"
        ).fetchall()
    ]
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    with exported_snapshot(pg_dsn) as snapshot:
        backfill = Backfill(pg_dsn, pg_dsn, "historic", "plan-job", [table], sinks,
                            chunk_size=400, workers=2, where=where)  # fmt: skip
        progress = backfill.run(snapshot)
    planned = pg.execute(
        "SELECT lower_key, upper_key, rows FROM historic._cdc_backfill "
        "WHERE job = 'plan-job' ORDER BY chunk"
    ).fetchall()
    uppers = expected[399::400]
    assert [upper for _, upper, _ in planned] == [*uppers, None]
    assert [lower for lower, _, _ in planned] == [None, *uppers]
    assert [n for _, _, n in planned] == [400] * len(uppers) + [len(expected) - 400 * len(uppers)]
    assert progress.rows == len(expected)
    copied = pg.execute("SELECT count(*) FROM historic.t").fetchone()
    assert copied == (len(expected),)
