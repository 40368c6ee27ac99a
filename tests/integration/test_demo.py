"""The incident end to end: racing HTTP clients against the real API, the daemon applying
the stream; director, historic and ClickHouse agree row for row (status and scores too),
where the old async fan-out would not."""

from __future__ import annotations

from cdc.dev import demo
from tests.harness import ClickHouseServer, PgServer, drop_database


def test_racing_api_clients_leave_three_equal_stores(
    pg_server: PgServer, clickhouse_server: ClickHouseServer
) -> None:
    try:
        report = demo.run(pg_server.dsn, clickhouse_server.url, clients=6, scorecards=20,
                          rounds=80)  # fmt: skip
    finally:
        clickhouse_server.client.command("DROP DATABASE IF EXISTS analytics")
        drop_database(pg_server.dsn, demo.DATABASE)
    assert report.differences == 0
    assert report.verify_clean and report.verified_ranges >= 2
    cards = report.stores["scorecards"]
    assert cards["director"].rows > 0
    assert cards["director"].submitted and cards["director"].submitted > 0
    for store in ("historic", "clickhouse"):
        assert cards[store].rows == cards["director"].rows
        assert cards[store].submitted == cards["director"].submitted
        assert report.stores["scores"][store].rows == report.stores["scores"]["director"].rows
    assert report.stores["scores"]["director"].rows > 0
    assert report.changes > 0 and report.lags
    assert report.naive_stale > 0, "the contrast run should show the stale-overwrite bug"
