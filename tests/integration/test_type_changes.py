"""Column types changed at the source while the daemon runs: widenings are followed by
both targets (a ClickHouse key column by remaking its table), in the batch that holds rows
of both types too; any other change sets that table aside, and the others go on."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from structlog.testing import capture_logs
from typer.testing import CliRunner

from cdc.cli import app
from cdc.sinks.clickhouse.client import quote_identifier
from tests.harness import ClickHouseServer
from tests.pipeline import cli_env, make_settings, running_daemon, wait_in_step, wait_until


def historic_types(pg: psycopg.Connection[Any], table: str) -> dict[str, str]:
    rows = pg.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (f"historic.{table}",),
    ).fetchall()
    return {name: type_ for name, type_ in rows if not name.startswith("_")}


def clickhouse_types(ch: Any, database: str, table: str) -> dict[str, str]:
    result = ch.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": database, "t": table},
    )
    return {name: type_ for name, type_ in result.result_rows if not name.startswith("_")}


def test_widened_columns_are_followed_by_both_targets(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, n int, d numeric(6,2), "
               "v varchar(5), at timestamptz(0))")  # fmt: skip
    pg.execute("INSERT INTO director.t SELECT g, g, g / 4.0, 'v' || g, '2026-01-01'::timestamptz"
               " + g * interval '1 s' FROM generate_series(1, 50) g")  # fmt: skip
    pg.prepare_threshold = None  # the test's reads: a plan kept over a type change fails
    ch = clickhouse_server.client
    # A long batch latency: the rows before and after a change share a batch.
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, batch_latency_ms=800)
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["t"], running=running)
        with pg.transaction():
            pg.execute("UPDATE director.t SET n = -n WHERE id <= 10")
        pg.execute("ALTER TABLE director.t ALTER n TYPE bigint, ALTER d TYPE numeric(12,4), "
                   "ALTER v TYPE varchar(40), ALTER at TYPE timestamptz(6)")  # fmt: skip
        pg.execute("INSERT INTO director.t VALUES (51, 5000000000, 12345678.1234, "
                   "'a value longer than five', '2026-01-01 00:00:00.123456+00')")  # fmt: skip
        wait_in_step(pg, ch, ch_database, ["t"], running=running)
        pg.execute("ALTER TABLE director.t ALTER id TYPE bigint")  # the key: ClickHouse remakes
        pg.execute("INSERT INTO director.t (id, n) VALUES (6000000000, 1)")
        pg.execute("UPDATE director.t SET v = 'moved' WHERE id = 7")
        pg.execute("DELETE FROM director.t WHERE id = 8")
        wait_in_step(pg, ch, ch_database, ["t"], running=running)
        assert running.daemon.quarantined == {}
    assert historic_types(pg, "t") == {
        "id": "bigint", "n": "bigint", "d": "numeric(12,4)", "v": "character varying(40)",
        "at": "timestamp(6) with time zone",
    }  # fmt: skip
    assert clickhouse_types(ch, ch_database, "t") == {
        "id": "Int64", "n": "Nullable(Int64)", "d": "Nullable(Decimal(12, 4))",
        "v": "Nullable(String)", "at": "Nullable(DateTime64(6, 'UTC'))",
    }  # fmt: skip
    leftovers = ch.query(f"SHOW TABLES FROM {quote_identifier(ch_database)} LIKE '%retype%'")
    assert leftovers.result_rows == []
    # A copy a kill left behind (before or after the swap) is dropped at the next start.
    ch.command(f"CREATE TABLE {quote_identifier(ch_database)}.t__cdc_retype (id Int64) "
               "ENGINE = MergeTree ORDER BY id")  # fmt: skip
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["t"], running=running)
    leftovers = ch.query(f"SHOW TABLES FROM {quote_identifier(ch_database)} LIKE '%retype%'")
    assert leftovers.result_rows == []


def test_a_type_change_not_followed_sets_only_that_table_aside(
    pg: psycopg.Connection[Any],
    pg_dsn: str,
    clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:
    """int -> text is not a widening: the table is quarantined with what to do, nothing
    of it is written with the wrong type, and the other tables keep streaming. The rewrite
    the change made is not copied again once the table is set aside (the copy would fail);
    a copy begun before is refused the same way: either way the table stays set aside."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, amount int)")
    pg.execute("CREATE TABLE director.u (id int PRIMARY KEY, v text)")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database, schema_poll_interval_s=1)
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        pg.execute("INSERT INTO director.t VALUES (1, 10)")
        wait_in_step(pg, ch, ch_database, ["t", "u"], running=running)
        pg.execute("ALTER TABLE director.t ALTER COLUMN amount TYPE text")
        pg.execute("INSERT INTO director.t VALUES (2, 'twenty')")
        pg.execute("INSERT INTO director.u VALUES (1, 'after')")
        wait_until(lambda: ("director", "t") in running.daemon.quarantined, what="quarantine")
        pg.execute("INSERT INTO director.t VALUES (3, 'thirty')")
        pg.execute("DELETE FROM director.t WHERE id = 1")  # set aside: not applied
        wait_in_step(pg, ch, ch_database, ["u"], running=running)
        reason = running.daemon.quarantined[("director", "t")]
        wait_until(lambda: any(e["event"] in ("table_copy_skipped", "table_load_done")
                               for e in logs), what="the rewritten table's copy")  # fmt: skip
        assert running.thread.is_alive()
    assert "'amount' of director.t changed type" in reason and "cdc rebuild <table>" in reason
    rows = pg.execute("SELECT id, amount FROM historic.t_current ORDER BY id").fetchall()
    assert rows == [(1, 10)], "nothing was written with the wrong type"
    state = pg.execute(
        "SELECT state, error FROM historic._cdc_tables WHERE table_name = 't'"
    ).fetchone()
    assert state is not None and state[0] == "quarantined" and "changed type" in state[1]
    # `cdc verify` names it set aside, with the reason, instead of reporting its drift.
    env = cli_env(settings)
    checked = CliRunner().invoke(app, ["verify", "--json", "--wait", "0"], env=env)
    assert checked.exit_code == 2, checked.output
    results = {t["table"]: t for t in json.loads(checked.output)["tables"]}
    assert "set aside by the daemon" in results["director.t"]["error"]
    assert "changed type" in results["director.t"]["error"]
    assert results["director.u"]["error"] is None and results["director.u"]["clean"]
    # The targets dropped by hand (what `cdc rebuild` does), then a restart. The table is
    # copied whole, with what was changed while it was set aside (row 1 deleted, row 3
    # inserted).
    pg.execute("DROP VIEW historic.t_current")
    pg.execute("DROP TABLE historic.t")
    database = quote_identifier(ch_database)
    ch.command(f"DROP VIEW {database}.t_current")
    ch.command(f"DROP TABLE {database}.t")
    with capture_logs() as logs, running_daemon(settings, ch) as running:
        pg.execute("INSERT INTO director.t VALUES (4, 'forty')")
        wait_in_step(pg, ch, ch_database, ["t", "u"], running=running)
        assert running.daemon.quarantined == {}
    assert any(e["event"] == "table_copied_again" and "dropped" in e["reason"] for e in logs)
    assert historic_types(pg, "t")["amount"] == "text"


def test_a_primary_key_changed_while_streaming_sets_only_that_table_aside(
    pg: psycopg.Connection[Any], pg_dsn: str, clickhouse_server: ClickHouseServer,
    ch_database: str,
) -> None:  # fmt: skip
    """A migration that changes a table's primary key (a tenant column added to it) made
    the historic upsert fail (`ON CONFLICT` on a key historic lacks) and the daemon stop for
    every table; ClickHouse would have folded rows the new key tells apart. The table is
    set aside by both targets, with the fix; after the fix it arrives under its new key."""
    pg.execute("CREATE SCHEMA director")
    pg.execute("CREATE TABLE director.t (id int PRIMARY KEY, tenant int NOT NULL, v text)")
    pg.execute("CREATE TABLE director.u (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO director.t SELECT g, 1, 'v' FROM generate_series(1, 20) g")
    ch = clickhouse_server.client
    settings = make_settings(pg_dsn, clickhouse_server.url, ch_database)
    env = cli_env(settings)
    with running_daemon(settings, ch) as running:
        wait_in_step(pg, ch, ch_database, ["t", "u"], running=running)
        pg.execute("ALTER TABLE director.t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (id, tenant)")
        pg.execute("INSERT INTO director.t VALUES (1, 2, 'same id, other tenant')")
        pg.execute("INSERT INTO director.u VALUES (1, 'after')")
        wait_until(lambda: ("director", "t") in running.daemon.quarantined, what="quarantine")
        wait_in_step(pg, ch, ch_database, ["u"], running=running)
        reason = running.daemon.quarantined[("director", "t")]
        assert running.thread.is_alive()
        refused = CliRunner().invoke(app, ["rebuild", "t"], env=env)
        assert refused.exit_code == 1 and "stop it first" in refused.output
    assert "now keyed by (id, tenant)" in reason and "cdc rebuild <table>" in reason
    pg.execute("DROP TABLE historic.t CASCADE")  # half the fix: ClickHouse's is kept
    with running_daemon(settings, ch) as running:
        wait_until(lambda: ("director", "t") in running.daemon.quarantined, what="quarantine")
        assert "ClickHouse" in running.daemon.quarantined[("director", "t")]
    # A view of an analyst's on the historic table is not dropped with it.
    pg.execute("CREATE VIEW public.report AS SELECT count(*) FROM historic.t")
    kept = CliRunner().invoke(app, ["rebuild", "t"], env=env)
    assert kept.exit_code == 1 and "report" in kept.output, kept.output
    pg.execute("DROP VIEW public.report")
    rebuilt = CliRunner().invoke(app, ["rebuild", "t"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"ClickHouse {ch_database}.t" in rebuilt.output
    with running_daemon(settings, ch) as running:
        pg.execute("INSERT INTO director.t VALUES (2, 2, 'streamed')")
        wait_in_step(pg, ch, ch_database, ["t", "u"], running=running)
        assert running.daemon.quarantined == {}
    rows = pg.execute("SELECT count(*) FROM historic.t_current WHERE id IN (1, 2)").fetchone()
    assert rows == (4,)
