"""The harness itself: a real logical slot streams a row; ClickHouse dedups by version."""

from __future__ import annotations

import select
from typing import Any

import psycopg

from cdc.sinks.clickhouse.client import quote_identifier


def test_pgoutput_slot_streams_an_inserted_row(pg: psycopg.Connection[Any], pg_dsn: str) -> None:
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
    pg.execute("CREATE PUBLICATION pub FOR TABLE t")
    pg.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    pg.execute("INSERT INTO t VALUES (1, 'hello harness')")

    with psycopg.connect(pg_dsn, replication="database", autocommit=True) as repl:
        repl.execute(
            "START_REPLICATION SLOT s LOGICAL 0/0 (proto_version '1', publication_names 'pub')"
        )
        pgconn = repl.pgconn
        received = b""
        while b"hello harness" not in received:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                ready, _, _ = select.select([pgconn.socket], [], [], 10)
                assert ready, "no replication data within 10 s"
                pgconn.consume_input()
                continue
            assert nbytes > 0, f"copy ended unexpectedly ({nbytes})"
            if bytes(data[:1]) == b"w":
                received += bytes(data)
        pgconn.put_copy_end()
        pgconn.flush()
        while pgconn.get_copy_data(0)[0] >= 0:  # drain until the server ends the copy
            select.select([pgconn.socket], [], [], 1)
            pgconn.consume_input()
        while pgconn.get_result() is not None:
            pass
    assert b"hello harness" in received


def test_replacing_merge_tree_keeps_highest_version(ch: Any, ch_database: str) -> None:
    table = f"{quote_identifier(ch_database)}.{quote_identifier('scores')}"
    ch.command(
        f"CREATE TABLE {table} (id UInt32, score String, _version UInt128, _is_deleted UInt8) "
        "ENGINE = ReplacingMergeTree(_version, _is_deleted) ORDER BY id"
    )
    big = 1 << 64
    rows = [
        [1, "newest", 3 * big + 1, 0],
        [1, "oldest", 1 * big + 1, 0],
        [1, "middle", 2 * big + 7, 0],
        [2, "alive", 5 * big, 0],
        [2, "deleted", 6 * big + 2, 1],
        [2, "stale", 4 * big, 0],
        [3, "kept", big, 0],
    ]
    for row in rows:  # one insert each: separate parts, merged only by FINAL
        ch.insert(
            f"{ch_database}.scores", [row], column_names=["id", "score", "_version", "_is_deleted"]
        )
    result = ch.query(
        f"SELECT id, score FROM {table} FINAL WHERE _is_deleted = 0 ORDER BY id"
    ).result_rows
    assert result == [(1, "newest"), (3, "kept")]
