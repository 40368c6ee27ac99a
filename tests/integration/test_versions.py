"""Invariant 2, with Postgres as the oracle: every row both targets hold carries
`_version = (commit_lsn << 64) | ordinal` of the change that wrote it, where the commit
LSN lies between the transaction's last change and the end of its commit record (as a
`test_decoding` slot reports them) and the ordinal is the change's 1-based position in
its transaction; a delete is a tombstone with a version of its own."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from cdc.protocol.lsn import Lsn
from tests.harness import ClickHouseServer
from tests.pipeline import make_settings, running_daemon, wait_in_step

TRANSACTIONS = [
    [
        "INSERT INTO director.cards VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "UPDATE director.cards SET note = 'a2' WHERE id = 1",
    ],
    [
        "DELETE FROM director.cards WHERE id = 3",
        "UPDATE director.cards SET note = 'b2' WHERE id = 2",
        "INSERT INTO director.cards VALUES (4, 'd')",
        "UPDATE director.cards SET id = 5 WHERE id = 1",
    ],
]
# Which change (transaction, ordinal) wrote each key's last image, and whether it deletes.
EXPECTED = {1: (1, 4, True), 2: (1, 2, False), 3: (1, 1, True), 4: (1, 3, False), 5: (1, 4, False)}


def _decoded(conn: psycopg.Connection[Any], slot: str) -> list[tuple[list[Lsn], Lsn]]:
    """Per committed transaction: the LSNs of its changes, and its commit's end."""
    transactions: list[tuple[list[Lsn], Lsn]] = []
    changes: list[Lsn] = []
    for lsn, data in conn.execute(
        "SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (slot,)
    ):
        if data.startswith("table director.cards"):
            changes.append(Lsn.parse(lsn))
        elif data.startswith("COMMIT") and changes:
            transactions.append((changes, Lsn.parse(lsn)))
            changes = []
    return transactions


def test_version_is_commit_lsn_and_ordinal(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.cards (id int PRIMARY KEY, note text)")
    ch = clickhouse_server.client
    oracle = f"versions_{uuid.uuid4().hex[:8]}"
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    with running_daemon(settings, ch) as running:
        pg.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (oracle,))
        try:
            for statements in TRANSACTIONS:
                with pg.transaction():
                    for statement in statements:
                        pg.execute(statement)
            wait_in_step(pg, ch, ch_database, ["cards"], running=running)
            decoded = _decoded(pg, oracle)
        finally:
            pg.execute("SELECT pg_drop_replication_slot(%s)", (oracle,))
    assert [len(changes) for changes, _ in decoded] == [4, 4]

    historic = {
        row[0]: (int(row[1]), row[2])
        for row in pg.execute("SELECT id, _version, _is_deleted FROM historic.cards")
    }
    clickhouse = {
        row[0]: (int(row[1]), bool(row[2]))
        for row in ch.query(
            f"SELECT id, _version, _is_deleted FROM `{ch_database}`.cards FINAL"
        ).result_rows
    }
    for key, (transaction, ordinal, deleted) in EXPECTED.items():
        version, tombstone = historic[key]
        assert tombstone is deleted, key
        assert version & ((1 << 64) - 1) == ordinal, key
        changes, commit_end = decoded[transaction]
        assert changes[-1] < Lsn(version >> 64) < commit_end, key
        if not deleted:  # FINAL leaves out tombstones
            assert clickhouse[key] == (version, False), key
    assert len(set(historic.values())) == len(historic)  # no two changes share a version
