"""A backfill's plan: every `chunk_size`-th key of the rows it copies, in key order, found
by walking the primary key's index (composite keys and a `--where` filter included); and
the batches in which a worker gives ClickHouse the chunks' rows."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cdc.load.backfill import Backfill
from cdc.load.workers import Progress
from cdc.schema import TableSchema
from cdc.sinks.base import CopiedRows
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.stream.snapshot import exported_snapshot
from tests.harness import ClickHouseServer
from tests.pipeline import clickhouse_rows, director_rows, historic_rows, prepared_sinks

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


@pytest.mark.parametrize("batch_bytes", [0, 10_000, 1 << 30])
def test_a_worker_gives_clickhouse_its_chunks_in_batches_of_batch_bytes(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    monkeypatch: pytest.MonkeyPatch,
    batch_bytes: int,
) -> None:
    """Each insert holds the chunks copied since the last one, up to the first that brings
    them to `batch_bytes` of COPY data (0: one insert per chunk); every chunk is done once
    ClickHouse has its rows."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, note text)")
    pg.execute("INSERT INTO director.t SELECT g, 'n' || g FROM generate_series(1, 3000) g")
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    inserts: list[list[int]] = []
    apply_copy = ClickHouseSink.apply_copy

    def recorded(
        sink: ClickHouseSink, layout: TableSchema, copies: list[CopiedRows], version: int
    ) -> list[int]:
        inserts.append([len(c.data) for c in copies])
        return apply_copy(sink, layout, copies, version)

    monkeypatch.setattr(ClickHouseSink, "apply_copy", recorded)
    with exported_snapshot(pg_dsn) as snapshot:
        Backfill(pg_dsn, pg_dsn, "historic", "batch-job", [table], sinks, chunk_size=250,
                 workers=1, batch_bytes=batch_bytes).run(snapshot)  # fmt: skip
    assert sum(map(len, inserts)) == 13  # 12 chunks of 250 rows and the empty last one
    for sizes in inserts[:-1]:
        assert batch_bytes <= sum(sizes), "given before the batch was full"
    for sizes in inserts:
        assert len(sizes) == 1 or sum(sizes[:-1]) < batch_bytes, "held past a full batch"
    if batch_bytes == 0:
        assert len(inserts) == 13
    elif batch_bytes == 10_000:
        assert 1 < len(inserts) < 13
    else:
        assert len(inserts) == 1
    assert pg.execute(
        "SELECT bool_and(done), sum(rows) FROM historic._cdc_backfill"
    ).fetchone() == (
        True,
        3000,
    )
    count = clickhouse_server.client.command(f"SELECT count() FROM `{ch_database}`.t FINAL")
    assert count == 3000


def copy_changed_midway(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str, columns: str, statements: list[str],
) -> Progress:  # fmt: skip
    """`director.t (id int PRIMARY KEY, <columns>)` with 1,000 rows copied in chunks of 100,
    `statements` run (committed) once the first chunk is done."""
    pg.execute("CREATE SCHEMA director")
    pg.execute(f"CREATE TABLE director.t (id int PRIMARY KEY, {columns})")
    values = ", ".join(["g"] + ["'v'" if "text" in c else "g" for c in columns.split(", ")[1:]])
    pg.execute(f"INSERT INTO director.t SELECT g, {values} FROM generate_series(1, 1000) g")
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    done: list[int] = []

    def change_after_the_first_chunk(progress: Progress) -> None:
        done.append(progress.done_chunks)
        if len(done) == 1:
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                for statement in statements:
                    other.execute(statement)

    with exported_snapshot(pg_dsn) as snapshot:
        backfill = Backfill(pg_dsn, pg_dsn, "historic", "changed-job", [table], sinks,
                            chunk_size=100, workers=1, batch_bytes=0,
                            on_progress=change_after_the_first_chunk)  # fmt: skip
        return backfill.run(snapshot)


@pytest.mark.parametrize("statement", [
    "ALTER TABLE director.t ALTER n TYPE bigint",  # rewrites the table
    "VACUUM FULL director.t",
    "TRUNCATE director.t",
])  # fmt: skip
def test_a_table_rewritten_while_it_is_copied_is_copied_again(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    statement: str,
) -> None:
    """A rewrite (ALTER ... TYPE) or a TRUNCATE is not MVCC-safe: once it commits, the
    copy's snapshot sees the table empty, and the chunks copied after it were empty. The
    copy then checks each table against its snapshot, and copies a rewritten one again at
    a new snapshot (described again: its types may have changed)."""
    inserted = ("INSERT INTO director.t VALUES (5000, 5000000000)" if "TYPE" in statement
                else "SELECT 1")  # fmt: skip
    copy_changed_midway(pg, pg_dsn, clickhouse_server, ch_database, "n int",
                        [statement, inserted])  # fmt: skip
    source = pg.execute("SELECT count(*), coalesce(sum(n), 0) FROM director.t").fetchone()
    copied = pg.execute("SELECT count(*), coalesce(sum(n), 0) FROM historic.t_current").fetchone()
    if "TRUNCATE" in statement:  # the stream's TRUNCATE removes the rows copied before it
        assert source == (0, 0)
    else:  # copied again at a snapshot after the rewrite: the row inserted since, too
        assert copied == source


@pytest.mark.parametrize("statement", [
    "ALTER TABLE director.t DROP COLUMN n",
    "ALTER TABLE director.t RENAME COLUMN n TO m",
])  # fmt: skip
def test_a_table_whose_columns_change_while_it_is_copied_is_copied_again(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    statement: str,
) -> None:
    """A snapshot does not keep the catalog as it was: once a column the copy was described
    with is dropped or renamed, its next chunk cannot be read (the daemon stopped on
    `column "n" does not exist`). The table is described again and copied again, whole,
    at a new snapshot."""
    progress = copy_changed_midway(pg, pg_dsn, clickhouse_server, ch_database,
                                   "n int, v text", [statement])  # fmt: skip
    assert progress.failed == {}
    columns = "id, m" if "RENAME" in statement else "id, v"
    source = pg.execute(f"SELECT {columns} FROM director.t ORDER BY id").fetchall()
    copied = pg.execute(f"SELECT {columns} FROM historic.t_current ORDER BY id").fetchall()
    assert copied == source and len(source) == 1000


def test_a_table_retyped_between_its_description_and_the_snapshot_is_copied_again(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """Described, then retyped before the copy's snapshot (a migration during the daemon's
    start): the binary COPY sends the column as it is now (8 bytes, not 4), which the
    daemon stopped on (`malformed field`). The table is described and copied again."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, n int, v text)")
    pg.execute("INSERT INTO director.t SELECT g, g, 'v' FROM generate_series(1, 300) g")
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    pg.execute("ALTER TABLE director.t ALTER n TYPE bigint USING n * 5000000000")
    with exported_snapshot(pg_dsn) as snapshot:
        backfill = Backfill(pg_dsn, pg_dsn, "historic", "retyped-job", [table], sinks,
                            chunk_size=100, workers=1)  # fmt: skip
        progress = backfill.run(snapshot)
    assert progress.failed == {}
    source = pg.execute("SELECT id, n FROM director.t ORDER BY id").fetchall()
    assert pg.execute("SELECT id, n FROM historic.t_current ORDER BY id").fetchall() == source
    ch_rows = clickhouse_server.client.query(
        f"SELECT id, n FROM `{ch_database}`.t_current ORDER BY id"
    ).result_rows
    assert [tuple(r) for r in ch_rows] == source


def test_a_key_column_renamed_before_the_plan_sets_the_table_aside_not_the_copy(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """The plan walks the key index by the key columns' names: one renamed after the table
    was described failed the whole copy (every other table's too). The table is described
    again; its targets are keyed by the old name, so it is set aside with the way out,
    and the other table of the job is copied."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    pg.execute("CREATE TABLE director.u (id int PRIMARY KEY, v text)")
    for name in ("t", "u"):
        pg.execute(f"INSERT INTO director.{name} SELECT g, 'v' FROM generate_series(1, 300) g")
    t, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    u, _ = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "u"
    )
    pg.execute("ALTER TABLE director.t RENAME COLUMN id TO key")
    with exported_snapshot(pg_dsn) as snapshot:
        backfill = Backfill(pg_dsn, pg_dsn, "historic", "renamed-key-job", [t, u], sinks,
                            chunk_size=100, workers=1)  # fmt: skip
        progress = backfill.run(snapshot)
    assert set(progress.failed) == {"t"} and "cdc rebuild" in progress.failed["t"]
    assert pg.execute("SELECT count(*) FROM historic.u_current").fetchone() == (300,)


def test_a_job_copying_a_table_recorded_as_replacing_replaces_what_its_targets_hold(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A table recorded as to be copied whole, replacing (made again under its name, or
    `cdc rebuild`), whose copy another job makes first (the initial load resumed at a
    start takes every published table it has work left on): that copy replaced nothing,
    and the rows of the table before stayed in the targets for good."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.t SELECT g, 'old' FROM generate_series(1, 300) g")
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    with exported_snapshot(pg_dsn) as snapshot:
        Backfill(pg_dsn, pg_dsn, "historic", "before", [table], sinks).run(snapshot)
    pg.execute("DELETE FROM director.t WHERE id > 100")  # as if made again with fewer rows
    pg.execute("UPDATE historic._cdc_tables SET state = 'replacing' WHERE table_name = 't'")
    with exported_snapshot(pg_dsn) as snapshot:
        Backfill(pg_dsn, pg_dsn, "historic", "resumed", [table], sinks).run(snapshot)
    expected = director_rows(pg, "director", "t")
    assert len(expected) == 100
    assert historic_rows(pg, "t") == expected
    assert clickhouse_rows(clickhouse_server.client, ch_database, "t") == expected
    state = pg.execute("SELECT state FROM historic._cdc_tables WHERE table_name = 't'").fetchone()
    assert state == ("ready",)
