"""The pipeline's sinks from settings, in apply order."""

from __future__ import annotations

from collections.abc import Callable

from cdc.ops.settings import Settings
from cdc.sinks.base import Sink
from cdc.sinks.clickhouse.sink import ClickHouseSink
from cdc.sinks.historic.sink import HistoricSink

SinkFactory = Callable[[], list[Sink]]


def default_sinks(settings: Settings) -> SinkFactory:
    """Historic first (it completes rows for the sinks after it), then ClickHouse."""

    def make() -> list[Sink]:
        return [
            HistoricSink(
                settings.require_historic_dsn(),
                settings.historic_schema,
                writers=settings.historic_writers,
            ),
            ClickHouseSink(
                settings.require_clickhouse_url(),
                settings.clickhouse_database,
                cluster=settings.clickhouse_cluster,
            ),
        ]

    return make
