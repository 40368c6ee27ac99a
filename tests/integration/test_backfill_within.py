"""A backfill into a historic schema of the source database: copied by the server, in the
snapshot, without overwriting what the stream wrote after the snapshot."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any

import psycopg
import pytest

from cdc.apply.batch import Batch
from cdc.describe import describe_table
from cdc.load.backfill import Backfill
from cdc.schema import TableSchema
from cdc.sinks.base import CopiedRows, CopyFormat
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.historic.sink import HistoricSink
from cdc.stream.snapshot import exported_snapshot
from tests.harness import ClickHouseServer
from tests.pipeline import prepared_sinks

pytestmark = pytest.mark.integration


def test_snapshot_rows_are_versioned_by_their_snapshot(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, note text, doc jsonb)")
    pg.execute(
        "INSERT INTO director.t SELECT g, 'old ' || g, jsonb_build_object('g', g) "
        "FROM generate_series(1, 3000) g"
    )
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    with exported_snapshot(pg_dsn) as snapshot:
        # What the stream would write after the snapshot: a newer version of two rows.
        newer = (snapshot.lsn + 1000) << 64
        pg.execute(
            "INSERT INTO historic.t (id, note, doc, _version) VALUES "
            "(7, 'newer', '{}', %s), (2999, 'newer', '{}', %s)",
            (newer, newer),
        )
        copied_by_client: list[int] = []
        apply_copy = HistoricSink.apply_copy

        def counted(
            sink: HistoricSink, layout: TableSchema, copies: list[CopiedRows], version: int
        ) -> list[int]:
            copied_by_client.extend(c.rows for c in copies)
            return apply_copy(sink, layout, copies, version)

        monkeypatch.setattr(HistoricSink, "apply_copy", counted)
        backfill = Backfill(pg_dsn, pg_dsn, "historic", "t-job", [table], sinks,
                            chunk_size=1000, workers=2)  # fmt: skip
        progress = backfill.run(snapshot)
    assert progress.rows == 3000 and not progress.failed
    assert len(copied_by_client) == 2, "the two chunks with a newer row: through the client"
    rows = dict(pg.execute("SELECT id, note FROM historic.t").fetchall())
    assert len(rows) == 3000
    assert rows[7] == rows[2999] == "newer", "a row newer than the snapshot was overwritten"
    assert rows[1] == "old 1" and rows[3000] == "old 3000"
    versions = pg.execute(
        "SELECT count(*) FROM historic.t WHERE _version = %s", (snapshot.version,)
    ).fetchone()
    assert versions == (2998,), "every other row is versioned by the snapshot"
    docs = pg.execute("SELECT doc FROM historic.t WHERE id = 5").fetchone()
    assert docs == ({"g": 5},)
    ch = clickhouse_server.client.query(
        f"SELECT count(), countIf(note = 'old 5') FROM `{ch_database}`.t FINAL"
    ).result_rows
    assert ch == [(3000, 1)]


def test_a_chunk_that_deadlocks_with_another_writer_is_copied_again(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """Another writer (as the daemon would be) holds one key of a chunk, then waits for a key
    the chunk has written: Postgres breaks the deadlock by rolling the chunk back, and the
    backfill copies the chunk again instead of failing."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, note text)")
    pg.execute("INSERT INTO director.t SELECT g, 'old ' || g FROM generate_series(1, 3000) g")
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    with exported_snapshot(pg_dsn) as snapshot, psycopg.connect(pg_dsn) as writer:
        newer = (snapshot.lsn + 1000) << 64
        writer.execute("SET deadlock_timeout = '1h'")  # the backfill's session detects it
        writer.execute("SET statement_timeout = '60s'")
        writer.execute(
            "INSERT INTO historic.t (id, note, _version) VALUES (1500, 'newer', %s)", (newer,)
        )
        backfill = Backfill(pg_dsn, pg_dsn, "historic", "t-job", [table], sinks,
                            chunk_size=1000, workers=1)  # fmt: skip
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(backfill.run, snapshot)
            waiting = None
            for _ in range(2000):
                waiting = pg.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    'AND query LIKE \'INSERT INTO "historic"."t"%\''
                ).fetchone()
                if waiting is not None or running.done():
                    break
                time.sleep(0.005)
            assert waiting is not None, "the chunk holding 1001..1499 never waited for key 1500"
            # Wait for a key the chunk wrote: a deadlock, which the chunk's session detects.
            writer.execute(
                "INSERT INTO historic.t (id, note, _version) VALUES (1001, 'newer', %s)", (newer,)
            )
            writer.commit()
            progress = running.result(timeout=60)
    assert progress.rows == 3000 and not progress.failed
    rows = dict(pg.execute("SELECT id, note FROM historic.t").fetchall())
    assert len(rows) == 3000
    assert rows[1001] == rows[1500] == "newer", "a row newer than the snapshot was overwritten"
    assert rows[1002] == "old 1002" and rows[1499] == "old 1499" and rows[3000] == "old 3000"
    ch = clickhouse_server.client.query(
        f"SELECT count(), countIf(note = 'old 1002') FROM `{ch_database}`.t FINAL"
    ).result_rows
    assert ch == [(3000, 1)]


def test_the_guarded_upsert_writes_rows_in_key_order(
    pg: psycopg.Connection[Any], pg_dsn: str
) -> None:
    """Rows staged in any order are written in key order: what keeps the daemon's upsert and
    a backfill's chunk, which lock the same keys, from deadlocking."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, note text)")
    table = describe_table(pg, "director", "t")
    sink = HistoricSink(pg_dsn, "historic")
    sink.prepare([table])
    pg.execute("INSERT INTO historic.t (id, note, _version) SELECT g, 'old', 1 FROM "
               "generate_series(1, 50) g")  # fmt: skip
    pg.execute("CREATE TABLE public.written (n bigserial, id int)")
    pg.execute(
        "CREATE FUNCTION public.log_write() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO public.written (id) VALUES (NEW.id); RETURN NEW; END$$"
    )
    pg.execute(
        "CREATE TRIGGER log_write AFTER INSERT OR UPDATE ON historic.t "
        "FOR EACH ROW EXECUTE FUNCTION public.log_write()"
    )
    keys = list(range(1, 61))
    random.Random(8).shuffle(keys)
    data = b"".join(b"%d\tnew\t2\n" % k for k in keys)
    assert sink.apply_copy(table, [CopiedRows(CopyFormat.TEXT, data, len(keys))], 2) == []
    sink.close()
    written = [r[0] for r in pg.execute("SELECT id FROM public.written ORDER BY n").fetchall()]
    assert written == list(range(1, 61))
    assert pg.execute("SELECT count(*) FROM historic.t WHERE note = 'new'").fetchone() == (60,)


def test_a_timestamp_clickhouse_cannot_hold_quarantines_the_table_and_names_it(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks of dates ClickHouse holds go straight through; the one with a timestamp before
    1900 is parsed, refused with the column named, and the table is quarantined."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, at timestamptz, d date)")
    pg.execute(
        "INSERT INTO director.t SELECT g, '2026-01-01'::timestamptz + g * interval '1 hour', "
        "'2026-01-01'::date + g FROM generate_series(1, 3000) g"
    )
    pg.execute("UPDATE director.t SET at = '1899-12-31 23:00:00+00' WHERE id = 2500")
    table, sinks = prepared_sinks(
        pg, pg_dsn, clickhouse_server.url, clickhouse_server.client, ch_database, "t"
    )
    parsed: list[tuple[int, int]] = []  # the keys of each chunk given to a sink parsed
    apply = ClickHouseSink.apply

    def counted(self: ClickHouseSink, batch: Batch) -> None:
        ids = [int(k) for t in batch.tables.values() for k, *_ in t.rows if isinstance(k, bytes)]
        parsed.append((min(ids), max(ids)))
        apply(self, batch)

    monkeypatch.setattr(ClickHouseSink, "apply", counted)
    with exported_snapshot(pg_dsn) as snapshot:
        backfill = Backfill(pg_dsn, pg_dsn, "historic", "t-job", [table], sinks,
                            chunk_size=1000, workers=1)  # fmt: skip
        progress = backfill.run(snapshot)
    assert parsed == [(2001, 3000)], "only the chunk with the old timestamp is parsed"
    assert "column 'at'" in progress.failed["t"]
    ch = clickhouse_server.client.query(
        f"SELECT count(), max(id), min(d) FROM `{ch_database}`.t FINAL"
    ).result_rows
    assert ch == [(2000, 2000, date(2026, 1, 2))]
