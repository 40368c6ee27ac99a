"""DDL text for the historic schema and ClickHouse, with identifiers that need quoting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cdc.schema import Column, TableSchema, TypeKind
from cdc.sinks import ddl
from cdc.sinks.clickhouse import ddl as ch_ddl
from cdc.sinks.clickhouse.types import PgType
from cdc.sinks.historic import ddl as pg_ddl


def column(name: str, oid: int, pg_type: str, nullable: bool = True) -> Column:
    return Column(name, oid, -1, pg_type, nullable, TypeKind.BASE)


TABLE = TableSchema(
    "director",
    "Score Card",
    (
        column("id", PgType.INT8, "bigint", nullable=False),
        column("Order", PgType.INT4, "integer", nullable=False),
        column("it's", 25, "text"),
        column("ünï`\\", PgType.TIMESTAMPTZ, "timestamp with time zone"),
        column("select", 25, "text", nullable=False),
    ),
    ("id", "Order"),
    "d",
)


def test_quote_string() -> None:
    assert ch_ddl.quote_string("plain") == "'plain'"
    assert ch_ddl.quote_string("it's \\ 'x'") == "'it\\'s \\\\ \\'x\\''"


def test_historic_table() -> None:
    assert pg_ddl.historic_table("historic", TABLE).as_string(None) == (
        'CREATE TABLE IF NOT EXISTS "historic"."Score Card" ('
        '"id" bigint NOT NULL, "Order" integer NOT NULL, "it\'s" text, '
        '"ünï`\\" timestamp with time zone, "select" text, '
        '"_version" numeric(39,0) NOT NULL, "_is_deleted" boolean NOT NULL DEFAULT false, '
        '"_commit_time" timestamptz, PRIMARY KEY ("id", "Order"))'
    )


def test_historic_current_view_and_truncations() -> None:
    assert pg_ddl.historic_current_view("hist ory", TABLE).as_string(None) == (
        'CREATE OR REPLACE VIEW "hist ory"."Score Card_current" AS '
        'SELECT "id", "Order", "it\'s", "ünï`\\", "select" FROM "hist ory"."Score Card" '
        'WHERE NOT "_is_deleted" AND "_version" > coalesce((SELECT version FROM '
        '"hist ory"."_cdc_truncations" WHERE table_name = \'Score Card\'), 0)'
    )
    assert pg_ddl.historic_truncations_table("historic").as_string(None) == (
        'CREATE TABLE IF NOT EXISTS "historic"."_cdc_truncations" '
        "(table_name text PRIMARY KEY, version numeric(39,0) NOT NULL)"
    )
    assert pg_ddl.historic_schema('a"b').as_string(None) == 'CREATE SCHEMA IF NOT EXISTS "a""b"'


def test_historic_alterations() -> None:
    new = column("New Col", 3802, "jsonb", nullable=False)
    assert pg_ddl.historic_add_column("historic", "Score Card", new).as_string(None) == (
        'ALTER TABLE "historic"."Score Card" ADD COLUMN IF NOT EXISTS "New Col" jsonb'
    )
    assert pg_ddl.historic_drop_not_null("historic", "Score Card", "select").as_string(None) == (
        'ALTER TABLE "historic"."Score Card" ALTER COLUMN "select" DROP NOT NULL'
    )
    defaulted = replace(new, missing=b'{"it\'s": 1}')
    assert pg_ddl.historic_add_column("historic", "t", defaulted).as_string(None) == (
        'ALTER TABLE "historic"."t" ADD COLUMN IF NOT EXISTS "New Col" jsonb '
        "DEFAULT '{\"it''s\": 1}'::jsonb"
    )


def test_view_names_postgres_would_truncate_are_cut_short_with_a_hash() -> None:
    assert ddl.current_view_name("t" * 55) == "t" * 55 + "_current"  # 63 bytes
    long, longer = "t" * 56, "t" * 63
    names = {ddl.current_view_name(n) for n in (long, longer, "é" * 31 + "x")}
    assert len(names) == 3  # no two tables share a view
    assert all(len(n.encode()) <= 63 and n.endswith("_current") for n in names)
    assert ddl.current_view_name(long).startswith("t" * 46 + "_")
    assert ddl.current_view_name("é" * 31 + "x").startswith("é" * 23 + "_")  # whole characters
    table = TableSchema("s", long, TABLE.columns, ("id",), "d")
    view = pg_ddl.historic_current_view("historic", table)
    assert ddl.current_view_name(long) in view.as_string(None)


def test_clickhouse_table() -> None:
    assert ch_ddl.clickhouse_table("db", TABLE) == (
        "CREATE TABLE IF NOT EXISTS `db`.`Score Card` ("
        "`id` Int64, `Order` Int32, `it's` Nullable(String), "
        "`ünï\\`\\\\` Nullable(DateTime64(6, 'UTC')), `select` String, "
        "`_version` UInt128, `_is_deleted` UInt8, `_commit_time` Nullable(DateTime64(6, 'UTC'))) "
        "ENGINE = ReplacingMergeTree(`_version`, `_is_deleted`) ORDER BY (`id`, `Order`)"
    )


def test_clickhouse_table_on_a_cluster() -> None:
    assert ch_ddl.clickhouse_table("my db", TABLE, cluster="main cluster") == (
        "CREATE TABLE IF NOT EXISTS `my db`.`Score Card` ON CLUSTER `main cluster` ("
        "`id` Int64, `Order` Int32, `it's` Nullable(String), "
        "`ünï\\`\\\\` Nullable(DateTime64(6, 'UTC')), `select` String, "
        "`_version` UInt128, `_is_deleted` UInt8, `_commit_time` Nullable(DateTime64(6, 'UTC'))) "
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/my db/Score Card', "
        "'{replica}', `_version`, `_is_deleted`) ORDER BY (`id`, `Order`)"
    )
    quoted = TableSchema("s", "it's", TABLE.columns, ("id",), "d")
    assert "'/clickhouse/tables/{shard}/db/it\\'s'" in ch_ddl.clickhouse_table("db", quoted, "c")


def test_clickhouse_truncations_table() -> None:
    assert ch_ddl.clickhouse_truncations_table("db") == (
        "CREATE TABLE IF NOT EXISTS `db`.`_cdc_truncations` (table_name String, version UInt128) "
        "ENGINE = ReplacingMergeTree(version) ORDER BY table_name"
    )
    assert ch_ddl.clickhouse_truncations_table("db", cluster="c") == (
        "CREATE TABLE IF NOT EXISTS `db`.`_cdc_truncations` ON CLUSTER `c` "
        "(table_name String, version UInt128) ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/db/_cdc_truncations', '{replica}', version) "
        "ORDER BY table_name"
    )


def test_clickhouse_current_view() -> None:
    quoted = TableSchema("s", "it's", TABLE.columns, ("id",), "d")
    assert ch_ddl.clickhouse_current_view("db", quoted) == (
        "CREATE OR REPLACE VIEW `db`.`it's_current` AS "
        "SELECT `id`, `Order`, `it's`, `ünï\\`\\\\`, `select` FROM `db`.`it's` FINAL "
        "WHERE `_is_deleted` = 0 AND `_version` > ifNull((SELECT max(version) FROM "
        "`db`.`_cdc_truncations` FINAL WHERE table_name = 'it\\'s'), 0)"
    )
    assert " ON CLUSTER `c` AS " in ch_ddl.clickhouse_current_view("db", quoted, cluster="c")


def test_clickhouse_alterations() -> None:
    new = column("New Col", PgType.INT8, "bigint", nullable=False)
    assert ch_ddl.clickhouse_add_column("db", "Score Card", new) == (
        "ALTER TABLE `db`.`Score Card` ADD COLUMN IF NOT EXISTS `New Col` Nullable(Int64)"
    )
    defaulted = replace(new, missing=b"7")
    assert ch_ddl.clickhouse_add_column("db", "t", defaulted).endswith(
        "`New Col` Nullable(Int64) DEFAULT CAST('7' AS Nullable(Int64))"
    )
    assert ch_ddl.clickhouse_make_nullable("db", "Score Card", "New Col", "Int64", cluster="c") == (
        "ALTER TABLE `db`.`Score Card` ON CLUSTER `c` MODIFY COLUMN `New Col` Nullable(Int64)"
    )


def test_types_made_nullable() -> None:
    assert ch_ddl.nullable_type("DateTime64(6, 'UTC')") == "Nullable(DateTime64(6, 'UTC'))"
    assert ch_ddl.nullable_type("LowCardinality(String)") == "LowCardinality(Nullable(String))"
    for already in (
        "Nullable(Int32)",
        "LowCardinality(Nullable(String))",
        "Array(Nullable(Int32))",
    ):
        assert ch_ddl.nullable_type(already) == already


def test_widenings_add_new_columns_and_make_loosened_or_dropped_ones_nullable() -> None:
    layout = TableSchema(
        "director",
        "t",
        (
            column("id", PgType.INT4, "integer", nullable=False),
            column("loosened", PgType.INT4, "integer", nullable=True),
            column("strict", PgType.INT4, "integer", nullable=False),
            column("fresh", 25, "text", nullable=False),
        ),
        ("id",),
        "d",
    )
    known = {
        "id": "Int32",
        "loosened": "Int32",
        "strict": "Int32",
        "gone": "String",
        "gone_nullable": "Nullable(String)",
        "gone_array": "Array(Nullable(Int32))",
    }
    added, widened = ch_ddl.clickhouse_widenings(known, layout)
    assert [c.name for c in added] == ["fresh"]
    assert widened == ["loosened", "gone"]
    assert ch_ddl.clickhouse_database("db", cluster="c") == (
        "CREATE DATABASE IF NOT EXISTS `db` ON CLUSTER `c`"
    )


def test_cluster_mode_reads_and_writes_through_distributed_tables() -> None:
    assert ch_ddl.clickhouse_distributed_table("db", "Score Card", ("id", "Part"), "c") == (
        "CREATE TABLE IF NOT EXISTS `db`.`Score Card_all` ON CLUSTER `c` AS `db`.`Score Card` "
        "ENGINE = Distributed(`c`, `db`, `Score Card`, cityHash64(`id`, `Part`))"
    )
    view = ch_ddl.clickhouse_current_view("db", TABLE, cluster="c")
    assert "FROM `db`.`Score Card_all` FINAL" in view
    assert "FROM `db`.`_cdc_truncations_all` FINAL" in view
    local = ch_ddl.clickhouse_current_view("db", TABLE)
    assert "FROM `db`.`Score Card` FINAL" in local
    assert "_all" not in local


@pytest.mark.parametrize(
    ("oid", "pg_type", "missing", "default"),
    [
        (PgType.BOOL, "boolean", b"t", " DEFAULT CAST('t' AS Nullable(Bool))"),
        (PgType.DATE, "date", b"infinity", " DEFAULT CAST('2299-12-31' AS Nullable(Date32))"),
        (PgType.TIMESTAMPTZ, "timestamptz", b"2024-01-01 08:00:00+00",
         " DEFAULT parseDateTime64BestEffortOrNull('2024-01-01 08:00:00+00', 6, 'UTC')"),
        (PgType.BYTEA, "bytea", b"\\x00ff", " DEFAULT unhex('00ff')"),
        (PgType.NUMERIC, "numeric", b"NaN", ""),  # ClickHouse cannot hold it
        (25, "text", None, ""),
    ],
)  # fmt: skip
def test_clickhouse_default_of_an_added_column(
    oid: int, pg_type: str, missing: bytes | None, default: str
) -> None:
    added = replace(column("c", oid, pg_type), missing=missing)
    assert ch_ddl.clickhouse_default(added) == default
