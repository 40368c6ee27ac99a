"""Append-only logs (tables without a key), the pure parts: which tables are logs, what the
follower does about them, their targets' DDL and SQL, how their changes fold into batches,
their copy by block ranges, and the stream asking for both publications."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from cdc.apply.batcher import BatchBuilder, native_fold
from cdc.apply.changes import Op
from cdc.describe import choose_key
from cdc.errors import CdcError, ErrorKind
from cdc.load.chunks import Chunk, chunk_filter, log_copy_sql
from cdc.protocol.lsn import Lsn
from cdc.schema import Column, TableSchema, TypeKind
from cdc.sinks.clickhouse import ddl as ch_ddl
from cdc.sinks.historic import ddl as pg_ddl
from cdc.sinks.historic.sql import upsert_sql
from cdc.stream.eligibility import SourceTable, classify, logged_only
from cdc.stream.followplan import plan
from cdc.stream.publications import INSERTS_ONLY, append_publication, create_publication_sql
from cdc.stream.walsender import start_replication_command
from tests.unit.test_batch import RELATION, builder_of, txn

pytestmark = pytest.mark.unit

KEYED = SourceTable("t", "director.t", False, False, "d", True, ())
KEYLESS = replace(KEYED, name="log", qualified="director.log", has_primary_key=False,
                  unusable=("director.log",))  # fmt: skip
LOG = TableSchema(
    "director", "log",
    (Column("v", 25, -1, "text", True, TypeKind.BASE),
     Column("n", 23, -1, "integer", True, TypeKind.BASE)),
    (), "d",
)  # fmt: skip


def test_keyless_tables_are_logs_unless_partitioned_or_unlogged() -> None:
    assert logged_only(KEYLESS)
    assert not logged_only(KEYED)
    assert not logged_only(replace(KEYLESS, unlogged=True))
    assert not logged_only(replace(KEYLESS, partitioned=True))
    keyed, logs, excluded = classify([KEYED, KEYLESS, replace(KEYLESS, name="u", unlogged=True)])
    assert [t.name for t in keyed] == ["t"] and [t.name for t in logs] == ["log"]
    assert [w.table for w in excluded] == ["u"]


def test_a_table_without_a_key_is_an_append_only_log_unless_its_identity_is_full() -> None:
    assert choose_key("s.t", "d", [], []) == ()
    assert choose_key("s.t", "n", [], []) == ()
    with pytest.raises(CdcError) as refused:
        choose_key("s.t", "f", [], [])
    assert refused.value.kind is ErrorKind.NO_KEY
    assert LOG.append_only and LOG.target_key == ("_version",)


def test_plan_adds_a_keyless_table_to_the_append_publication() -> None:
    todo = plan([KEYED, KEYLESS], {"t"}, {}, {"t": frozenset()}, set(), True, set())
    assert todo.add == () and todo.add_log == ("log",) and todo.excluded == ()
    assert todo.logs == ("log",)
    streamed = plan([KEYED, KEYLESS], {"t"}, {}, {"t": frozenset(), "log": frozenset()},
                    set(), True, {"log"})  # fmt: skip
    assert streamed.add_log == () and streamed.logs == ("log",)
    # Without an append publication (a slot older than it) it stays excluded.
    without = plan([KEYED, KEYLESS], {"t"}, {}, {"t": frozenset()}, set(), True, None)
    assert without.add_log == () and [w.table for w in without.excluded] == ["log"]
    # One that lost its key leaves the main publication first (its targets are keyed).
    lost = plan([KEYLESS], {"log"}, {}, {"log": frozenset()}, set(), True, set())
    assert [w.table for w in lost.unpublish] == ["log"] and lost.add_log == ()
    # A log that gained a key stays a log (its targets are keyed by version).
    gained = plan([replace(KEYED, name="log")], set(), {}, {"log": frozenset()}, set(), True,
                  {"log"})  # fmt: skip
    assert gained.add == () and gained.logs == ("log",)


def test_append_publication_publishes_inserts_and_truncates_only() -> None:
    assert append_publication("cdc") == "cdc_append"
    text = create_publication_sql("cdc_append", "director", ["log"], INSERTS_ONLY)
    assert text.as_string(None) == (
        'CREATE PUBLICATION "cdc_append" FOR TABLE "director"."log" '
        "WITH (publish = 'insert, truncate', publish_via_partition_root = true)"
    )


def test_the_stream_asks_for_every_publication() -> None:
    command = start_replication_command("s", Lsn(0), ["cdc", 'od"d'], 2, False, False)
    assert 'publication_names \'"cdc","od""d"\'' in command.as_string(None)


def test_log_targets_are_keyed_by_version() -> None:
    historic = pg_ddl.historic_table("historic", LOG).as_string(None)
    assert historic.endswith('PRIMARY KEY ("_version"))')
    clickhouse = ch_ddl.clickhouse_table("db", LOG)
    assert "ENGINE = ReplacingMergeTree(`_version`, `_is_deleted`) ORDER BY (`_version`)" in (
        clickhouse
    )
    upsert = upsert_sql("historic", LOG, "_cdc_stage").as_string(None)
    assert upsert.endswith('ON CONFLICT ("_version") DO NOTHING')
    assert 'ORDER BY "_cdc_stage"."_version"' in upsert


def test_log_chunks_are_block_ranges_and_rows_versioned_by_ctid() -> None:
    middle = chunk_filter(LOG, Chunk("log", 1, ["4"], ["8"]), None).as_string(None)
    assert middle == "ctid >= '(4,0)'::tid AND ctid < '(8,0)'::tid"
    assert chunk_filter(LOG, Chunk("log", 0, None, None), None).as_string(None) == "true"
    copy = log_copy_sql(LOG, Chunk("log", 0, None, ["4"]), None, 7 << 64).as_string(None)
    assert f"'{7 << 64}'::numeric + ((ctid::text::point)[0]::bigint << 16" in copy
    assert copy.endswith("WHERE ctid < '(4,0)'::tid) TO STDOUT")


@pytest.fixture(params=["C", "Python"])
def folding(request: pytest.FixtureRequest) -> Callable[..., BatchBuilder]:
    native = request.param == "C"
    if native:
        assert native_fold() is not None
    return lambda key_positions: builder_of(key_positions, None, native=native)


def test_a_log_keeps_every_insert_keyed_by_its_version(
    folding: Callable[..., BatchBuilder],
) -> None:
    builder = folding(lambda relation: ())
    same = (b"1", b"a")
    builder.add(txn(100, [(Op.INSERT, same, None), (Op.INSERT, same, None)]))
    builder.add(txn(200, [(Op.INSERT, same, None), (Op.TRUNCATE, None, None),
                          (Op.INSERT, same, None), (Op.INSERT, same, None)]))  # fmt: skip
    table = builder.build().tables[RELATION.namespace, RELATION.name]
    assert table.truncate_version == (200 << 64) | 2
    versions = sorted(image.version for image in table.rows.values())
    assert versions == [(200 << 64) | 3, (200 << 64) | 4]
    assert all(image.values == same and image.inserted for image in table.rows.values())
    assert set(table.rows) == {(b"%d" % v,) for v in versions}
