"""A backfill into a historic schema of the source database: copied by the server, in the
snapshot, without overwriting what the stream wrote after the snapshot."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cdc.backfill import Backfill
from cdc.schema import TableSchema, describe_table
from cdc.sinks.historic import HistoricSink
from cdc.snapshot import exported_snapshot
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, shared_client_sinks

pytestmark = pytest.mark.integration


def test_rows_newer_than_the_snapshot_are_kept(
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
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    table = describe_table(pg, "director", "t")
    sinks = shared_client_sinks(settings, clickhouse_server.client)
    for sink in sinks():
        sink.prepare([table])
        sink.close()
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

        def counted(sink: HistoricSink, layout: TableSchema, data: bytes, version: int) -> None:
            copied_by_client.append(data.count(b"\n"))
            apply_copy(sink, layout, data, version)

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
